"""Live sync, Ferry beside Syncthing: two `ferry sync` clients (live mode,
separate FERRY_HOMEs and folders, one user) on loopback through one real
`ferry server`, on the scenarios of ../shared/bench/peer_syncthing.py, then
that harness on the same scenarios and sizes in the same run.

    .venv/bin/python bench/sync.py [--scale 1] [--only a,b,c,d,e,f,g] [--skip-syncthing]

Scenarios (sizes x --scale, as in peer_syncthing.py):
  a  one 1 GiB random file appears on A (prepared outside the folder, renamed in)
  b  10,000 files of 4 KiB in 100 folders appear on A (one folder renamed in)
  c  1 byte in the middle of the big file modified in place
  d  1 byte inserted at offset 0 of the big file (new version written beside
     the folder, then renamed over the old file)
  e  1 MiB appended in place to the big file
  f  a 1 KiB file saved on A, --reps times (default 20): median and p95
  g  a 100 MiB file renamed (its untimed set-up sync is reported as g_setup)

Timing: t0 is taken right before the change on A. Arrival: os.stat() is
polled on B until every affected path has A's size and nanosecond mtime
(and renamed-away paths are gone); the content is then verified with
SHA-256 outside the timed window.

Bytes: the TCP byte counters of the clients' own sockets to the server
(`ss -tinp`: bytes_acked out, bytes_received in, per socket, sampled every
0.2 s, so the count includes WebSocket framing, requests and pings; there is
no TLS on loopback), from before the change until both clients are idle and
the counters have been still for --quiet seconds. `up` is A -> server,
`down` is server -> B. `stored` is the growth of the server's `blocks`
table (new block bytes the server stored). Syncthing's figure is its own
BEP byte count for the A <-> B connection (both directions).

Also reported per scenario: CPU seconds used between t0 and arrival by A, B,
the server, the PostgreSQL backends of its database, this script, and
"other" (the rest of the machine, from /proc/stat: it should be near 0; when
it is not, someone else's work shared the two cores and the run is suspect).

Start it two minutes or more after anything deleted thousands of files on
the same filesystem (a previous run's clean-up included): on ext4 without a
journal, as on these VMs, creating a file meanwhile can cost ten times as
much (bench/README.md, run 10). Ferry's scratch folder is deleted only after
Syncthing's run, for the same reason.

Needs PostgreSQL (127.0.0.1:5432 or $FERRY_TEST_DATABASE_URL, else the
embedded one) and `syncthing` on PATH unless --skip-syncthing. Prints
`RESULT {json}` per Ferry scenario, a table of Ferry vs Syncthing with
ratios (Ferry / Syncthing time) and one final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from protocol.chunking import MAX_BLOCK  # noqa: E402
from tests.support.servers import (  # noqa: E402
    FERRY,
    Device,
    FerryServer,
    admin_url,
    create_database,
    drop_database,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CHUNK = 8 * MiB
PEER = HERE.parent.parent / "shared" / "bench" / "peer_syncthing.py"
AIMS = {  # scenario -> maximum Ferry / Syncthing time, from issue 3
    "a": 1.0,
    "b": 0.5,
    "c": 0.5,
    "d": 0.25,
    "e": 0.5,
}
EDITS = ("c", "d", "e")  # "each edit sends at most two chunks plus the new bytes"
SYNC_ARGS: list[str] = []  # --sync-args
OVERHEAD_ALLOWANCE = 256 * KiB  # block lists, requests and replies beside the content
F_MEDIAN_AIM_S = 0.150
G_AIM_S = 0.300


def log(*a: object) -> None:
    print("#", *a, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --- files ------------------------------------------------------------------------------


def write_random_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            b = os.urandom(min(CHUNK, left))
            f.write(b)
            h.update(b)
            left -= len(b)
        f.flush()
        os.fsync(f.fileno())
    return h.hexdigest()


def sha256_file(path: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(CHUNK):
            h.update(b)
    return h


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (p95 of 20 samples is the 19th smallest)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


# --- CPU accounting ----------------------------------------------------------------------


def system_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(procs: dict[str, list[psutil.Process]]) -> dict[str, Any]:
    """CPU seconds so far: of our processes by role, of this script (with its
    finished children), of every other process by pid, and of the whole machine."""
    mine = {proc.pid for ps in procs.values() for proc in ps} | {os.getpid()}
    out: dict[str, Any] = {}
    for role, ps in procs.items():
        total = 0.0
        for proc in ps:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
        out[role] = total
    t = os.times()
    out["bench"] = t.user + t.system + t.children_user + t.children_system
    others: dict[tuple[int, float], tuple[bool, float]] = {}
    for proc in psutil.process_iter(["ppid", "create_time", "cpu_times"]):
        info = proc.info
        if proc.pid in mine or info["cpu_times"] is None:
            continue
        kernel = proc.pid == 2 or info["ppid"] == 2  # kernel threads: writeback, softirq...
        others[(proc.pid, info["create_time"])] = (kernel, info["cpu_times"].user + info["cpu_times"].system)
    out["others"] = others
    out["system"] = system_busy_s()
    return out


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds over the window: per role of ours; "kernel" (kernel threads,
    e.g. writing dirty pages back, and CPU time no process was charged for);
    "other" (everybody else's processes: near 0 for figures worth keeping)."""
    d = {k: after[k] - before[k] for k in before if k not in ("others", "system")}
    d["other"] = sum(  # a process that started within the window: all of its time
        t1 - before["others"].get(key, (kernel, 0.0))[1]
        for key, (kernel, t1) in after["others"].items()
        if not kernel
    )
    d["kernel"] = max(0.0, after["system"] - before["system"] - sum(d.values()))
    return {k: round(v, 3) for k, v in d.items()}


# --- byte counting ----------------------------------------------------------------------


class ByteMeter:
    """TCP byte counters of the given client processes' sockets to ``port``,
    from `ss -tinp`, sampled in a thread so a socket that closes between two
    snapshots still counts up to its last sample."""

    _conn = re.compile(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:(\d+).*?pid=(\d+)")
    _acked = re.compile(r"bytes_acked:(\d+)")
    _recv = re.compile(r"bytes_received:(\d+)")

    def __init__(self, port: int, pids: dict[int, str], every: float = 0.2) -> None:
        self.port, self.pids, self.every = port, pids, every
        self.latest: dict[tuple[str, int], tuple[int, int]] = {}  # (who, local port) -> (out, in)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        out = subprocess.run(["ss", "-tinpH", "state", "established", f"( dport = :{self.port} )"],
                             capture_output=True, text=True, check=False).stdout  # fmt: skip
        seen: dict[tuple[str, int], tuple[int, int]] = {}
        key: tuple[str, int] | None = None
        for line in out.splitlines():
            m = self._conn.search(line)
            if m and int(m.group(2)) == self.port:
                who = self.pids.get(int(m.group(3)))
                key = (who, int(m.group(1))) if who else None
                continue
            a, r = self._acked.search(line), self._recv.search(line)
            if key and (a or r):
                seen[key] = (int(a.group(1)) if a else 0, int(r.group(1)) if r else 0)
                key = None
        with self._lock:
            for k, v in seen.items():
                old = self.latest.get(k, (0, 0))
                self.latest[k] = (max(old[0], v[0]), max(old[1], v[1]))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):
                self.sample()

    def snapshot(self) -> dict[tuple[str, int], tuple[int, int]]:
        self.sample()
        with self._lock:
            return dict(self.latest)

    @staticmethod
    def delta(before: dict, after: dict) -> dict[str, int]:
        d = {"A_out": 0, "A_in": 0, "B_out": 0, "B_in": 0}
        for k, (o, i) in after.items():
            bo, bi = before.get(k, (0, 0))
            d[f"{k[0]}_out"] += o - bo
            d[f"{k[0]}_in"] += i - bi
        return d

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- the Ferry side ---------------------------------------------------------------------


class Client:
    def __init__(self, name: str, device: Device, folder: Path) -> None:
        self.name, self.device, self.folder = name, device, folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self._log: Any = None

    def start(self) -> None:
        env = {**os.environ, "FERRY_HOME": str(self.device.home)}
        self._log = open(self.device.home / "sync.log", "ab")
        self.proc = subprocess.Popen([*FERRY, "sync", str(self.folder), *SYNC_ARGS], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)  # fmt: skip
        self.ps = psutil.Process(self.proc.pid)
        log(f"ferry sync {self.name} pid={self.proc.pid} folder={self.folder}")

    def status(self) -> dict[str, Any]:
        """This folder's entry of `ferry status --json` (read from the status file)."""
        try:
            everything = json.loads((self.device.home / "status.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return everything.get("folders", {}).get(str(self.folder.resolve()), {})  # type: ignore[no-any-return]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.device.home / "sync.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log:
            self._log.close()


class FerryBench:
    def __init__(self, args: argparse.Namespace, sizes: dict[str, int]) -> None:
        self.args = args
        self.sizes = sizes
        self.results: list[dict[str, Any]] = []
        self.work = Path(tempfile.mkdtemp(prefix="ferry-sync-bench-", dir=args.work))
        self.stage = self.work / "stage"
        self.stage.mkdir()
        self.admin: str | None = None
        self.db: str | None = None
        self.server: FerryServer | None = None
        self.a: Client | None = None
        self.b: Client | None = None
        self.meter: ByteMeter | None = None
        self.big_rel = "big.bin"
        self.big_hash: str | None = None

    # -- lifecycle -------------------------------------------------------------------

    def setup(self) -> None:
        self.admin = admin_url(self.work)
        self.db = create_database(self.admin)
        self.server = FerryServer(self.work / "server", self.db).start()
        r = self.server.admin("user", "add", "bench", "--password-stdin", stdin="pw\n")
        if r.returncode:
            raise BenchError(f"ferry admin user add failed: {r.stderr}")
        clients = []
        for name in ("A", "B"):
            device = Device(self.work / f"home{name}", self.server).login("bench", "pw", device=name)
            clients.append(Client(name, device, self.work / name))
        self.a, self.b = clients
        for c in clients:
            c.start()
        self.meter = ByteMeter(self.server.port, {self.a.proc.pid: "A", self.b.proc.pid: "B"})  # type: ignore[union-attr]
        if not self.settle(max_s=120):
            raise BenchError("ferry sync clients did not become idle after start")
        print("SETUP " + json.dumps({"ferry_server": self.server.url, "work": str(self.work),
                                     "sizes": self.sizes}), flush=True)  # fmt: skip

    def teardown(self) -> None:
        if self.meter:
            self.meter.stop()
        for c in (self.b, self.a):
            if c:
                c.stop()
        if self.server:
            self.server.stop()
        if self.admin and self.db:
            with contextlib.suppress(Exception):
                drop_database(self.admin, self.db)

    def remove_scratch(self) -> None:
        """Called only after Syncthing's run: on ext4 without a journal (these
        VMs) a new file's inode takes much longer for a minute or so after many
        files were deleted nearby, so deleting Ferry's 30,000 files before
        Syncthing's scenario b would slow Syncthing down."""
        if self.args.keep:
            log("keeping", self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- measurement -------------------------------------------------------------------

    def stored_bytes(self) -> int:
        async def go() -> int:
            conn = await asyncpg.connect(self.db)
            try:
                return int(await conn.fetchval("SELECT coalesce(sum(size), 0) FROM blocks"))
            finally:
                await conn.close()

        return asyncio.run(go())

    def cpu_procs(self) -> dict[str, list[psutil.Process]]:
        """Our processes by role; PostgreSQL backends serving our database count as "postgres"."""
        assert self.a and self.b and self.server and self.server.proc and self.db
        dbname = self.db.split("?")[0].rsplit("/", 1)[1]
        pg = []
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, TypeError):
                # a backend's title is "postgres: ... <database> ..."; the server's own
                # command line names the database too, so it is left out (it has its own role)
                line = " ".join(proc.info["cmdline"] or [])
                if line.startswith("postgres") and dbname in line and proc.pid != self.server.proc.pid:
                    pg.append(proc)
        return {"A": [self.a.ps], "B": [self.b.ps], "server": [psutil.Process(self.server.proc.pid)],  # type: ignore[list-item]
                "postgres": pg}  # fmt: skip

    def check_alive(self) -> None:
        for c in (self.a, self.b):
            assert c is not None
            if not c.alive():
                raise BenchError(f"ferry sync {c.name} exited ({c.proc.returncode}):\n{c.log_tail()}")  # type: ignore[union-attr]

    def settle(self, max_s: float | None = None, quiet: float | None = None) -> bool:
        """Both clients say "up to date" with nothing pending, and the byte
        counters have not moved for ``quiet`` seconds."""
        assert self.a and self.b and self.meter
        max_s = max_s or self.args.timeout
        quiet = self.args.quiet if quiet is None else quiet
        deadline = time.monotonic() + max_s
        last, since = None, None
        while time.monotonic() < deadline:
            self.check_alive()
            idle = all(
                s.get("state") == "up to date" and not s.get("pending")
                for s in (self.a.status(), self.b.status())
            )
            counters = self.meter.snapshot()
            now = time.monotonic()
            if idle and counters == last:
                since = since or now
                if now - since >= quiet:
                    return True
            else:
                since = None
            last = counters
            time.sleep(0.1)
        log("WARNING: settle() gave up after", max_s, "s; A:", self.a.status(), "B:", self.b.status())
        return False

    def stat_expect(self, rels: list[str]) -> dict[str, tuple[int, int]]:
        assert self.a
        out = {}
        for rel in rels:
            s = os.stat(self.a.folder / rel)
            out[rel] = (s.st_size, s.st_mtime_ns)
        return out

    def wait_b(
        self, expect: dict[str, tuple[int, int]], gone: list[str], deadline: float, poll: float
    ) -> float:
        """Poll B until every path in ``expect`` has A's size and mtime and every path in
        ``gone`` is absent. A round stops at the first path not there yet (the wait is
        over only when one round passes them all), so polling 10,000 files costs
        this process little CPU, which the clients on the same cores need."""
        assert self.b
        pending, gone_pending = dict(expect), set(gone)
        checks = 0
        while True:
            for rel in list(pending):
                try:
                    s = os.stat(self.b.folder / rel)
                except FileNotFoundError:
                    break
                if (s.st_size, s.st_mtime_ns) != pending[rel]:
                    break
                del pending[rel]
            for rel in list(gone_pending):
                if not os.path.lexists(self.b.folder / rel):
                    gone_pending.discard(rel)
            if not pending and not gone_pending:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(f"timeout waiting for B: {len(pending)} files pending, "
                                 f"{len(gone_pending)} not removed (e.g. {list(pending)[:3]})")  # fmt: skip
            checks += 1
            if checks % 200 == 0:
                self.check_alive()
            time.sleep(poll)

    def verify(self, hashes: dict[str, str]) -> list[str]:
        assert self.b
        bad = []
        for rel, hx in hashes.items():
            try:
                if sha256_file(self.b.folder / rel).hexdigest() != hx:
                    bad.append(rel)
            except OSError:
                bad.append(rel)
        return bad

    def measure(
        self, name: str, desc: str, change: Callable[[], object], rels: list[str], hashes: dict[str, str],
        payload: int, changed: int, gone: list[str] | None = None, poll: float | None = None,
        quiet: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        assert self.a and self.b and self.meter and self.server and self.server.proc
        if not self.settle(quiet=quiet):
            log("WARNING: not quiet before", name)
        procs = self.cpu_procs()
        c0, s0 = self.meter.snapshot(), self.stored_bytes()
        cpu0 = cpu_snapshot(procs)
        t0 = time.monotonic()
        change()
        change_s = time.monotonic() - t0
        expect = self.stat_expect(rels)
        t1 = self.wait_b(expect, gone or [], t0 + self.args.timeout, poll or self.args.poll)
        cpu1 = cpu_snapshot(procs)
        secs = t1 - t0
        bad = self.verify(hashes)
        settled = self.settle(quiet=quiet)
        if bad:  # B may have been shown a newer stat before the content settled: look again
            bad = self.verify({k: hashes[k] for k in bad})
        d = ByteMeter.delta(c0, self.meter.snapshot())
        stored = self.stored_bytes() - s0
        return {
            "scenario": name, "desc": desc, "seconds": round(secs, 4), "change_op_s": round(change_s, 4),
            "bytes_up": d["A_out"], "bytes_down": d["B_in"],
            "bytes_total": sum(d.values()), "bytes_detail": d, "stored_bytes": stored,
            "payload_bytes": payload, "changed_bytes": changed,
            "MBps": round(payload / secs / 1e6, 2) if payload and secs > 0 else None,
            "cpu_s": cpu_delta(cpu0, cpu1),
            "verified": not bad, "settled": settled,
        }  # fmt: skip

    def emit(self, res: dict[str, Any]) -> None:
        self.results.append(res)
        print("RESULT " + json.dumps(res), flush=True)
        log(f"{res['scenario']}: {res['seconds']:.3f}s up {fmt_bytes(res.get('bytes_up'))} "
            f"down {fmt_bytes(res.get('bytes_down'))} stored {fmt_bytes(res.get('stored_bytes'))} "
            f"cpu {res.get('cpu_s')} {'ok' if res.get('verified') else 'NOT VERIFIED'}")  # fmt: skip

    # -- scenarios ---------------------------------------------------------------------

    def new_big_file(self, name: str, desc: str) -> dict[str, Any]:
        assert self.a
        staged = self.stage / "big.part"
        hx = write_random_file(staged, self.sizes["big"])
        os.sync()
        self.big_hash = hx
        dst = self.a.folder / self.big_rel
        return self.measure(name, desc, lambda: os.rename(staged, dst), [self.big_rel], {self.big_rel: hx},
                            self.sizes["big"], self.sizes["big"])  # fmt: skip

    def ensure_big(self) -> None:
        if self.big_hash is None:
            self.emit(self.new_big_file("setup_big", "untimed setup: create big file"))

    def sc_a(self) -> None:
        self.emit(self.new_big_file("a", f"new {fmt_bytes(self.sizes['big'])} random file"))

    def sc_b(self) -> None:
        assert self.a
        n, size = self.sizes["nfiles"], self.sizes["small"]
        ndirs = max(1, min(100, n))
        per = (n + ndirs - 1) // ndirs
        staged_top = self.stage / "small"
        hashes: dict[str, str] = {}
        k = 0
        for di in range(ndirs):
            (staged_top / f"d{di:03d}").mkdir(parents=True)
            for fi in range(per):
                if k >= n:
                    break
                rel = f"small/d{di:03d}/f{fi:05d}.bin"
                data = os.urandom(size)
                (self.stage / rel).write_bytes(data)
                hashes[rel] = hashlib.sha256(data).hexdigest()
                k += 1
        os.sync()
        res = self.measure("b", f"{n} x {fmt_bytes(size)} files in {ndirs} dirs",
                           lambda: os.rename(staged_top, self.a.folder / "small"),  # type: ignore[union-attr]
                           list(hashes), hashes, n * size, n * size, poll=max(self.args.poll, 0.05))  # fmt: skip
        self.emit(res)

    def sc_c(self) -> None:
        self.ensure_big()
        assert self.a
        path = self.a.folder / self.big_rel
        size = path.stat().st_size
        off = size // 2
        with open(path, "rb") as f:
            f.seek(off)
            newb = bytes([(f.read(1)[0] + 1) & 0xFF])
        h, pos = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while b := f.read(CHUNK):
                if pos <= off < pos + len(b):
                    b = b[: off - pos] + newb + b[off - pos + 1 :]
                h.update(b)
                pos += len(b)
        hx = h.hexdigest()
        os.sync()

        def change() -> None:
            with open(path, "r+b") as f:
                f.seek(off)
                f.write(newb)

        res = self.measure("c", f"modify 1 byte in place at offset {off} of {fmt_bytes(size)} file",
                           change, [self.big_rel], {self.big_rel: hx}, size, 1)  # fmt: skip
        self.big_hash = hx
        self.emit(res)

    def sc_d(self) -> None:
        self.ensure_big()
        assert self.a
        path = self.a.folder / self.big_rel
        staged = self.stage / "big-insert.part"
        h = hashlib.sha256(b"\x00")
        size = path.stat().st_size
        with open(path, "rb") as src, open(staged, "wb") as dst:
            dst.write(b"\x00")
            while b := src.read(CHUNK):
                dst.write(b)
                h.update(b)
            dst.flush()
            os.fsync(dst.fileno())
        hx = h.hexdigest()
        keep = self.stage / "big-old.keep"  # the timed rename need not free 1 GiB of extents
        os.link(path, keep)
        os.sync()
        res = self.measure("d", f"insert 1 byte at offset 0 of {fmt_bytes(size)} file (new version renamed over old)",
                           lambda: os.replace(staged, path), [self.big_rel], {self.big_rel: hx},
                           size + 1, 1)  # fmt: skip
        keep.unlink()
        self.big_hash = hx
        self.emit(res)

    def sc_e(self) -> None:
        self.ensure_big()
        assert self.a
        path = self.a.folder / self.big_rel
        data = os.urandom(self.sizes["append"])
        h = sha256_file(path)
        h.update(data)
        hx = h.hexdigest()
        size = path.stat().st_size
        os.sync()

        def change() -> None:
            with open(path, "ab") as f:
                f.write(data)

        res = self.measure("e", f"append {fmt_bytes(len(data))} in place to {fmt_bytes(size)} file",
                           change, [self.big_rel], {self.big_rel: hx}, size + len(data), len(data))  # fmt: skip
        self.big_hash = hx
        self.emit(res)

    def sc_f(self) -> None:
        assert self.a
        samples = []
        for i in range(self.args.reps):
            rel = f"f_{i:02d}.bin"
            path = self.a.folder / rel
            data = os.urandom(self.sizes["tiny"])
            hx = hashlib.sha256(data).hexdigest()

            def change(path: Path = path, data: bytes = data) -> None:
                with open(path, "wb") as f:
                    f.write(data)

            r = self.measure("f", "", change, [rel], {rel: hx}, len(data), len(data),
                             poll=self.args.fast_poll, quiet=1.5)  # fmt: skip
            samples.append(r)
            log(f"f #{i}: {r['seconds']:.4f}s, up {r['bytes_up']} down {r['bytes_down']} cpu {r['cpu_s']}")
        secs = [s["seconds"] for s in samples]
        self.emit({
            "scenario": "f", "desc": f"{fmt_bytes(self.sizes['tiny'])} file saved on A until complete on B, "
                                     f"median of {len(secs)}",
            "seconds": round(statistics.median(secs), 4), "seconds_p95": round(percentile(secs, 95), 4),
            "seconds_min": round(min(secs), 4), "seconds_max": round(max(secs), 4),
            "samples_s": [round(s, 4) for s in secs],
            "bytes_up": int(statistics.median(s["bytes_up"] for s in samples)),
            "bytes_down": int(statistics.median(s["bytes_down"] for s in samples)),
            "bytes_total": int(statistics.median(s["bytes_total"] for s in samples)),
            "stored_bytes": int(statistics.median(s["stored_bytes"] for s in samples)),
            "payload_bytes": self.sizes["tiny"], "changed_bytes": self.sizes["tiny"],
            "cpu_s": {k: round(statistics.median(s["cpu_s"][k] for s in samples), 3) for k in samples[0]["cpu_s"]},
            "verified": all(s["verified"] for s in samples),
        })  # fmt: skip

    def sc_g(self) -> None:
        assert self.a
        src_rel, dst_rel = "rename-src.bin", "rename-dst.bin"
        staged = self.stage / "rename.part"
        hx = write_random_file(staged, self.sizes["rename"])
        os.sync()
        src, dst = self.a.folder / src_rel, self.a.folder / dst_rel
        self.emit(self.measure("g_setup", f"untimed setup for g: new {fmt_bytes(self.sizes['rename'])} file",
                               lambda: os.rename(staged, src), [src_rel], {src_rel: hx},
                               self.sizes["rename"], self.sizes["rename"]))  # fmt: skip
        self.emit(self.measure("g", f"rename a {fmt_bytes(self.sizes['rename'])} file",
                               lambda: os.rename(src, dst), [dst_rel], {dst_rel: hx},
                               self.sizes["rename"], 0, gone=[src_rel]))  # fmt: skip

    def run(self, order: list[str]) -> None:
        self.setup()
        for s in order:
            log(f"=== Ferry scenario {s} ===")
            getattr(self, "sc_" + s)()


# --- the Syncthing side -----------------------------------------------------------------


def run_syncthing(args: argparse.Namespace, sizes: dict[str, int], order: list[str]) -> dict[str, dict]:
    cmd = [sys.executable, str(args.peer), "--only", ",".join(order),
           "--big-bytes", str(sizes["big"]), "--nfiles", str(sizes["nfiles"]),
           "--rename-bytes", str(sizes["rename"]), "--small-size", str(sizes["small"]),
           "--append-size", str(sizes["append"]), "--tiny-size", str(sizes["tiny"]),
           "--reps", str(args.reps), "--quiet", str(args.quiet), "--timeout", str(args.timeout)]  # fmt: skip
    if args.work:
        cmd += ["--tmpdir", str(args.work)]
    log("running", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # its stderr: ours
    out: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[7:])
            out[r["scenario"]] = r
        elif line.startswith("SETUP "):
            out["_setup"] = json.loads(line[6:])
    if proc.returncode:
        log(f"WARNING: peer_syncthing.py exited {proc.returncode}; using the results it printed")
    return out


# --- report -------------------------------------------------------------------------------


def compare(order: list[str], ferry: dict[str, dict], st: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    for s in order:
        fr = ferry.get(s)
        sr = st.get("f_watch" if s == "f" else s)
        row: dict[str, Any] = {"scenario": s}
        if fr:
            row.update(ferry_s=fr["seconds"], ferry_up=fr.get("bytes_up"), ferry_down=fr.get("bytes_down"),
                       ferry_stored=fr.get("stored_bytes"), ferry_ok=fr.get("verified"),
                       other_cpu_s=fr.get("cpu_s", {}).get("other"))  # fmt: skip
            if s == "f":
                row["ferry_p95_s"] = fr["seconds_p95"]
        if sr:
            row.update(syncthing_s=sr["seconds"], syncthing_bytes=sr.get("bytes_transferred"),
                       syncthing_ok=sr.get("verified"))  # fmt: skip
            if s == "f":
                row["syncthing_p95_s"] = round(percentile(sr["samples_s"], 95), 4)
        if fr and sr and sr["seconds"] > 0:
            row["ratio"] = round(fr["seconds"] / sr["seconds"], 3)
        row["aim"], row["aim_met"] = aim_of(s, row)
        if s in EDITS and fr:
            limit = 2 * MAX_BLOCK + fr["changed_bytes"] + OVERHEAD_ALLOWANCE
            row["bytes_aim"] = "up and down <= 2 blocks + new bytes"
            row["bytes_aim_met"] = max(fr["bytes_up"], fr["bytes_down"]) <= limit
        rows.append(row)
    return rows


def aim_of(s: str, row: dict[str, Any]) -> tuple[str, bool | None]:
    if s in AIMS:
        return f"ratio <= {AIMS[s]}", (row["ratio"] <= AIMS[s]) if "ratio" in row else None
    if s == "f":
        return f"median < {F_MEDIAN_AIM_S * 1000:.0f} ms", (
            row["ferry_s"] < F_MEDIAN_AIM_S if "ferry_s" in row else None
        )
    if s == "g":
        if "ferry_s" not in row:
            return "< 300 ms, no content sent", None
        return "< 300 ms, no content sent", row["ferry_s"] < G_AIM_S and row.get("ferry_stored") == 0
    return "-", None


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = ["scenario", "Ferry s", "Syncthing s", "ratio F/S", "Ferry up", "Ferry down", "Ferry stored",
            "Syncthing bytes", "aim", "met", "bytes aim met", "others' CPU s"]  # fmt: skip

    def s(v: Any, f: str = "{:.3f}") -> str:
        return "-" if v is None else f.format(v)

    lines = []
    for r in rows:
        ferry_s = s(r.get("ferry_s"))
        st_s = s(r.get("syncthing_s"))
        if r["scenario"] == "f":
            ferry_s += f" (p95 {s(r.get('ferry_p95_s'))})"
            st_s += f" (p95 {s(r.get('syncthing_p95_s'))})"
        yes_no = {True: "yes", False: "NO", None: "-"}
        met, bytes_met = yes_no[r["aim_met"]], yes_no[r.get("bytes_aim_met")]
        lines.append([r["scenario"], ferry_s, st_s, s(r.get("ratio"), "{:.2f}"),
                      fmt_bytes(r.get("ferry_up")), fmt_bytes(r.get("ferry_down")),
                      fmt_bytes(r.get("ferry_stored")), fmt_bytes(r.get("syncthing_bytes")), r["aim"], met, bytes_met,
                      s(r.get("other_cpu_s"), "{:.2f}")])  # fmt: skip
    w = [max(len(c), *(len(x[i]) for x in lines)) if lines else len(c) for i, c in enumerate(cols)]
    print()
    print(
        "Ferry (two live `ferry sync` clients through one server) vs Syncthing (two peers, direct), loopback"
    )
    print("up = A -> server, down = server -> B (TCP bytes); stored = new block bytes on the server;")
    print("Syncthing bytes = BEP bytes A <-> B; f: median (p95) of the samples, Syncthing watcher only;")
    print(f"bytes aim (c, d, e): up and down each <= 2 x {fmt_bytes(MAX_BLOCK)} blocks + the new bytes "
          f"+ {fmt_bytes(OVERHEAD_ALLOWANCE)} for requests; others' CPU s: what other people's processes "
          "used during Ferry's timed window (f: median)")  # fmt: skip
    print(" | ".join(c.ljust(w[i]) for i, c in enumerate(cols)))
    print("-+-".join("-" * x for x in w))
    for x in lines:
        print(" | ".join(v.ljust(w[i]) for i, v in enumerate(x)))
    sys.stdout.flush()


def code_identity() -> dict[str, Any] | None:
    """The commit the measured code is at, and which of its files differ from it."""
    root = str(HERE.parent)
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "client", "server", "protocol"],
                               capture_output=True, text=True, check=True).stdout.split("\n")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": head, "modified": [ln[3:] for ln in dirty if ln.strip()]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the 1 GiB file, the 10,000 small files and the 100 MiB file by this")  # fmt: skip
    p.add_argument("--only", default="a,b,c,d,e,f,g", help="comma-separated scenarios, run in this order")
    p.add_argument("--skip-syncthing", action="store_true", help="measure Ferry only")
    p.add_argument("--reps", type=int, default=20, help="repetitions of scenario f")
    p.add_argument("--quiet", type=float, default=2.0, help="seconds without traffic that count as settled")
    p.add_argument("--poll", type=float, default=0.01, help="poll interval on B (s)")
    p.add_argument("--fast-poll", type=float, default=0.002, help="poll interval for scenario f (s)")
    p.add_argument("--timeout", type=float, default=900, help="max seconds for any one wait")
    p.add_argument("--work", type=Path, default=None, help="parent of the scratch folders (default: /tmp)")
    p.add_argument("--peer", type=Path, default=PEER, help="the shared Syncthing harness")
    p.add_argument("--keep", action="store_true", help="keep Ferry's scratch folder")
    p.add_argument("--sync-args", default="", help='more arguments for both `ferry sync`s, e.g. "--lan off"')
    args = p.parse_args()
    SYNC_ARGS[:] = args.sync_args.split()

    if not args.skip_syncthing and not args.peer.is_file():
        p.error(f"no Syncthing harness at {args.peer}; give --peer PATH or --skip-syncthing")
    order = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in order if s not in "abcdefg" or len(s) != 1]:
        p.error(f"unknown scenarios: {unknown}")
    sizes = {
        "big": int(GiB * args.scale),
        "nfiles": max(1, int(10_000 * args.scale)),
        "small": 4 * KiB,
        "append": 1 * MiB,
        "tiny": 1 * KiB,
        "rename": int(100 * MiB * args.scale),
    }
    loadavg = os.getloadavg()
    log(f"load average at start: {loadavg[0]:.2f} {loadavg[1]:.2f} {loadavg[2]:.2f}")

    bench = FerryBench(args, sizes)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    rc = 0
    try:
        bench.run(order)
    except (BenchError, KeyboardInterrupt, Exception) as e:
        rc = 1
        log(f"ERROR (Ferry side): {e!r}")
        for c in (bench.a, bench.b):
            if c:
                log(f"--- ferry sync {c.name} log tail ---\n{c.log_tail()}")
        if bench.server and bench.server.proc:
            log("--- server log tail ---\n" + "\n".join(bench.server.log().splitlines()[-30:]))
    finally:
        bench.teardown()
    ferry = {r["scenario"]: r for r in bench.results}

    st: dict[str, dict] = {}
    try:
        if not args.skip_syncthing and rc == 0:
            st = run_syncthing(args, sizes, order)
    finally:
        bench.remove_scratch()
    rows = compare(order, ferry, st)
    print_table(rows)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {psutil.cpu_count()} cores "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "loadavg_at_start": [round(x, 2) for x in loadavg],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "sizes": sizes,
        "ferry_code": code_identity(),
        "syncthing_version": (st.get("_setup") or {}).get("syncthing_version"),
        "rows": rows,
    }
    print(json.dumps(summary))
    return rc


if __name__ == "__main__":
    sys.exit(main())
