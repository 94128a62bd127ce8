"""LAN sync: three devices of one user, one new file, with LAN sync on and off.

    .venv/bin/python bench/lan.py [--size 1GiB] [--only online,gone] [--lan off,on] [--uplink MB/s]

Scenarios (each run with ``--lan on`` and with ``--lan off``, on a fresh
server database, fresh homes and folders, and a fresh random file):
  online  A, B and C run live `ferry sync` (static peers: each other); the
          file is renamed into A's folder. t0 is the rename; the end is when
          both B and C have it (polled by size; the file appears by an atomic
          rename once every block is verified). This is the office case: the
          device that made the file is still on the network.
  gone    A uploads the file with `ferry sync --once --lan off` and exits;
          then B and C start live `ferry sync` at the same moment (t0) and
          fetch it. Nobody on the LAN holds the file at the start.

``--uplink MB/s`` puts the server behind one shared link of that speed
(a TCP proxy in this process, both directions paced by one byte budget per
direction), as a building's Internet link would be; the peers talk to each
other directly. Without it (the default) the server is on loopback too, as
fast as the peers, which shows the bytes saved but not the time.

Server bytes: ``ferry_block_bytes_sent_total`` from the server's ``/metrics``
before t0 and after both arrived (block bytes sent to clients; uploads are
not counted). CPU: seconds all cores spent busy in the timed window
(/proc/stat), whoever spent them. Contents are checked with SHA-256 after
the timed window. Before each run the disk is synced and the last run's
folders are removed, so no run pays for the one before.

Needs PostgreSQL (127.0.0.1:5432 or $FERRY_TEST_DATABASE_URL, else the
embedded one). Prints one line per run and a final JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.sync import cpu_delta, cpu_snapshot  # noqa: E402
from server.config import parse_size  # noqa: E402
from tests.support.lan import digest, sent  # noqa: E402
from tests.support.moto_server import free_port  # noqa: E402
from tests.support.servers import Device, FerryServer, admin_url, create_database, drop_database  # noqa: E402

MiB = 1024 * 1024


class Uplink:
    """A TCP proxy to the server whose two directions each carry at most
    ``rate`` bytes per second in total, over every connection."""

    def __init__(self, target_port: int, rate: float) -> None:
        self.target_port, self.rate = target_port, rate
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._next = {"up": 0.0, "down": 0.0}
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_w, "up"), self._pipe(up_r, writer, "down"),
                             return_exceptions=True)  # fmt: skip

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await src.read(64 * 1024):
                now = time.monotonic()
                start = max(now, self._next[way])
                self._next[way] = start + len(data) / self.rate
                await asyncio.sleep(start - now)
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()


def write_random(path: Path, size: int) -> str:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
        os.fsync(f.fileno())  # its write-back is not on the timed clock
    return digest(path)


def wait_all(paths: list[Path], size: int, procs: list[subprocess.Popen[str]], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.stat().st_size == size for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ferry sync exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
                )
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the file to arrive")
        time.sleep(0.05)


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)  # as Ctrl-C: it writes its final status
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def run(scenario: str, lan: str, size: int, pg_admin: str, root: Path, uplink: float) -> dict[str, Any]:
    url = create_database(pg_admin)
    server = FerryServer(root / "server", url).start()
    procs: list[subprocess.Popen[str]] = []
    try:
        r = server.admin("user", "add", "alice", "--password-stdin", stdin="pw\n")
        assert r.returncode == 0, r.stderr
        reach: Any = Uplink(server.port, uplink * 1e6) if uplink else server  # devices log in through it
        devices = [Device(root / f"home-{n}", reach).login("alice", "pw", n) for n in "abc"]
        folders = [root / f"folder-{n}" for n in "abc"]
        ports = [free_port() for _ in devices]

        roles: dict[str, list[psutil.Process]] = {
            "server": [psutil.Process(server.proc.pid)],
            "a": [],
            "b": [],
            "c": [],
        }

        def live(i: int) -> subprocess.Popen[str]:
            peers = [arg for j, p in enumerate(ports) if j != i for arg in ("--lan-peer", f"127.0.0.1:{p}")]
            proc = devices[i].popen(
                "sync", str(folders[i]), "--lan", lan, "--lan-port", str(ports[i]), *peers
            )
            procs.append(proc)
            roles["abc"[i]].append(psutil.Process(proc.pid))
            return proc

        staged = root / "big.bin"
        want = write_random(staged, size)
        if scenario == "online":
            for i in range(3):
                folders[i].mkdir()
                live(i)
            time.sleep(3)  # all three up and idle (their first, empty cycles done)
            before, t0, cpu0 = sent(server), time.monotonic(), cpu_snapshot(roles)
            os.rename(staged, folders[0] / "big.bin")
        else:
            folders[0].mkdir()
            os.rename(staged, folders[0] / "big.bin")
            devices[0].run("sync", str(folders[0]), "--once", "--lan", "off", check=True, timeout=1800)
            before, t0, cpu0 = sent(server), time.monotonic(), cpu_snapshot(roles)
            live(1)
            live(2)
        wait_all([folders[1] / "big.bin", folders[2] / "big.bin"], size, procs)
        elapsed, cpu = time.monotonic() - t0, cpu_delta(cpu0, cpu_snapshot(roles))
        server_bytes = sent(server) - before
        for f in folders[1:]:
            assert digest(f / "big.bin") == want, f"{f}/big.bin differs"
        stop(procs)  # each writes its final status: bytes from peers and from the server
        lan_figures = {}
        for d, f in zip(devices[1:], folders[1:], strict=True):
            status = json.loads((d.home / "status.json").read_text())["folders"][str(f.resolve())]
            info = status.get("lan", {})  # (not `lan`: that is the mode this run is in)
            lan_figures[f.name] = {k: v for k, v in info.items() if k != "peers"}
            lan_figures[f.name]["trouble"] = [
                p["last_trouble"] for p in info.get("peers", []) if p.get("last_trouble")
            ]
        return {"scenario": scenario, "lan": lan, "size": size, "uplink_MBps": uplink, "seconds": round(elapsed, 2),
                "cpu_s": round(sum(cpu.values()), 1), "cpu_by": {k: round(v, 1) for k, v in cpu.items() if k != "bench"},
                "server_bytes": server_bytes, "x_file": round(server_bytes / size, 3), "devices": lan_figures}  # fmt: skip
    finally:
        stop(procs)
        server.stop()
        drop_database(pg_admin, url)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1GiB"))
    ap.add_argument("--only", default="online,gone")
    ap.add_argument("--lan", default="off,on", help="which modes to run (default: off,on)")
    ap.add_argument("--uplink", type=float, default=0.0, metavar="MB/s",
                    help="put the server behind one shared link this fast (default: loopback, unlimited)")  # fmt: skip
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-lan-") as tmp:
        pg_admin = admin_url(Path(tmp) / "pg")
        for scenario in args.only.split(","):
            for lan in args.lan.split(","):
                root = Path(tmp) / f"{scenario}-{lan}"
                root.mkdir()
                os.sync()  # the run before left gigabytes to write back: not on this run's clock
                result = run(scenario, lan, args.size, pg_admin, root, args.uplink)
                shutil.rmtree(root, ignore_errors=True)
                print(f"{scenario:6} lan {lan:3}: {result['seconds']:7.2f} s ({result['cpu_s']:5.1f} s CPU), server sent "
                      f"{result['server_bytes'] / MiB:8.1f} MiB ({result['x_file']} x the file); CPU s {result['cpu_by']}", flush=True)  # fmt: skip
                results.append(result)
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cpus", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
