"""A randomized model-based sync test, in the spirit of Dropbox's sync testing.

Three clients (separate homes and folders, one user, one real `ferry server`
on the real PostgreSQL) take random steps chosen by ``random.Random(seed)``:

* file operations on their own folder: create, edit in place, save
  atomically (temp file + rename), append, truncate, chmod +x/-x, delete,
  rename, move between folders, mkdir, rmdir (recursive), and replacing a
  file by a folder of the same name or the reverse. Few names, shared by
  files and folders, so devices collide; half the picks go to paths touched
  lately, so one file is moved and edited, or edited on two devices, often;
* a sync, run in-process (:class:`client.engine.Engine.run_once`, as
  ``sync_once`` runs it, so the test also sees each cycle's actions);
* going offline for a while (simply not syncing); the server stopped for a
  while (``FerryServer.stop()``; syncs tried meanwhile must fail, not pass)
  and started again; the server restarted while a client syncs;
* ``ferry sync --once`` processes: one SIGKILLed after a random short delay,
  or two or three at once (their commits race on the server, one may be
  killed), while the user goes on editing those folders (some writes in two
  goes with a pause, like an app saving a big file).

The oracle. Every write's bytes are unique (they name seed, client, step and
write), and the hash of every content ever written is kept (``written``).
When a client *starts* a sync, each file content in its folder is an edit
that device saved; if that sync finishes (the engine reached a fixed point,
or the process exited 0), each of those contents must survive
(``must_keep``) unless the user destroyed it while that sync ran. An edit
overwritten locally before any sync that saw it finished may vanish. Every
content a user deleted or overwrote on some device is kept in ``destroyed``.

While running: a sync with the server up must succeed and reach a fixed point
(I7), one with the server down must fail; every file a sync starts from holds
content some device wrote (I3). At the end the server is up and every client
syncs, round robin, until a whole round does nothing (bounded: I1, I7). Then:

1. I1: every replica's tree (kinds, content, executable bit) equals the
   server's (heads joined with versions, read from the database), and each
   client's state agrees (its synced and remote trees are the server's heads);
2. I2: every content in ``must_keep`` is at some path (possibly a conflicted
   copy) or in the server's version history; and if no device ever deleted
   or overwrote it, it is at a path, not only in history;
3. I3: no file on a replica, and no version in the server's history, has
   content that no device wrote (truncation never empties a file, so an empty
   file anywhere would be torn content);
4. I4: the server's tree is well-formed (every head's version is live and at
   that path, each parent is a folder, one path per file id), and no staged
   download is left behind.

CI runs :data:`SEEDS`. ``FERRY_FUZZ_SEEDS=N`` adds N random seeds (printed and
in the test ids), ``FERRY_FUZZ_SEED=a,b`` adds given ones (to replay a
failure), ``FERRY_FUZZ_STEPS`` changes the number of steps. A failure prints
the seed and the whole operation log, each sync's actions cycle by cycle
and the engine's warnings included (also written to ``oplog.txt`` in the
test's tmp dir). The engine's clock (conflicted-copy names) follows the step
number, so a seed replays the same way up to the first step where real time
matters (a kill, a race).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from client import clock as clock_mod
from client import engine as engine_mod
from client.engine import STAGING, Engine, folder_id
from client.home import Credentials, load_credentials
from client.state import State
from client.transport import ConnectionLost
from protocol.chunking import chunk_bytes
from protocol.hashing import content_hash
from protocol.paths import parent_of
from tests.support.servers import Device, FerryServer

# each of these once caught a client bug this test was written with (a Record or a DeleteLocal
# dropping state it should keep, a MoveLocal recording the server's newer content as synced;
# 23: an upload committing a file emptied by a rewrite that began after the scan)
SEEDS = [2, 3, 9, 12, 23]
STEPS = int(os.environ.get("FERRY_FUZZ_STEPS", "160"))
CLIENTS = 3
FINAL_ROUNDS = 8  # round-robin syncs at the end before "did not converge" (I1, I7)
# few names, so that clients collide; "g" and "x" are used for files and folders alike
DIR_NAMES = ["A", "B", "docs", "g", "x"]
FILE_NAMES = ["f1.txt", "f2.txt", "notes.md", "data.bin", ".hidden", "g", "x"]
MAX_DEPTH = 3


def _seeds() -> list[int]:
    seeds = list(SEEDS)
    seeds += [int(s) for s in os.environ.get("FERRY_FUZZ_SEED", "").replace(",", " ").split()]
    extra = int(os.environ.get("FERRY_FUZZ_SEEDS", "0") or 0)
    if extra:
        fresh = [random.SystemRandom().randrange(1, 10**9) for _ in range(extra)]
        print(f"FERRY_FUZZ_SEEDS={extra}: extra seeds {fresh}")
        seeds += fresh
    return seeds


def hash_of(data: bytes) -> bytes:
    """The content hash a client computes for these bytes."""
    return content_hash(b.hash for b in chunk_bytes(data))


Replica = dict[str, tuple[str, bytes | None, bool]]  # "/a/b" -> (kind, content hash, executable)


def replica(root: Path, strict: bool = True) -> Replica:
    """A client's folder as the server would list it (Ferry's own files left out).
    ``strict=False``: a sync may be changing the folder meanwhile; skip what vanishes."""
    out: Replica = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".ferry-"))
        rel = "" if Path(dirpath) == root else "/" + str(Path(dirpath).relative_to(root))
        for d in dirnames:
            out[f"{rel}/{d}"] = ("dir", None, False)
        for f in sorted(filenames):
            if f.startswith(".ferry-"):
                continue
            full = Path(dirpath) / f
            try:
                out[f"{rel}/{f}"] = ("file", hash_of(full.read_bytes()), bool(full.stat().st_mode & 0o100))
            except (FileNotFoundError, IsADirectoryError):
                if strict:
                    raise
    return out


@dataclass
class FuzzClient:
    index: int
    device: Device
    folder: Path
    creds: Credentials
    offline_until: int = -1

    @property
    def name(self) -> str:
        return f"c{self.index}"


@dataclass
class Sim:
    seed: int
    server: FerryServer
    clients: list[FuzzClient]
    rng: random.Random
    log: list[str] = field(default_factory=list)
    written: dict[bytes, str] = field(default_factory=dict)  # content hash -> which write made it
    must_keep: dict[bytes, str] = field(default_factory=dict)  # content hash -> where a finished sync saw it
    destroyed: set[bytes] = field(default_factory=set)  # contents a user deleted or overwrote somewhere
    step: int = 0
    writes: int = 0
    server_down_until: int = -1
    mtime_base: int = field(default_factory=lambda: time.time_ns() - 3600 * 10**9)
    stats: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went
    concurrent: bool = False  # a sync process runs while we operate: writes are slow, races expected
    destroyed_log: list[bytes] = field(default_factory=list)  # destroyed, in order (windows of a sync)
    recent: list[str] = field(default_factory=list)  # paths touched lately, by any client

    # --- bookkeeping -----------------------------------------------------------------

    def note(self, line: str) -> None:
        """Add a line to the operation log; a line repeating the previous one is counted, not repeated."""
        if self.log and self.log[-1].split("] ", 1)[1].split("  (x")[0] == line:
            last, _, times = self.log[-1].partition("  (x")
            self.log[-1] = f"{last}  (x{int(times.rstrip(')') or 1) + 1})"
        else:
            self.log.append(f"[{self.step:3}] {line}")

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def fail(self, why: str) -> str:
        self.log.append(f"FAILED: {why}")
        return (
            f"seed {self.seed}: {why}\n"
            f"replay: FERRY_FUZZ_SEED={self.seed} pytest {__file__} -k 'seed{self.seed}'\n"
            "operation log:\n" + "\n".join(self.log)
        )

    @property
    def server_up(self) -> bool:
        return self.server_down_until < 0

    # --- writing files ---------------------------------------------------------------

    def content(self, c: FuzzClient, op: str) -> bytes:
        tag = f"<seed {self.seed} {c.name} step {self.step} write {self.writes} {op}>\n".encode()
        r = self.rng.random()
        size = self.rng.randrange(300_000, 1_300_000) if r < 0.04 else self.rng.randrange(0, 3000)
        return tag + self.rng.randbytes(size)

    def put(self, c: FuzzClient, path: Path, change: Callable[[bytes], bytes], how: str = "inplace") -> bytes:
        """Change the file at ``path`` (created if need be) from its content ``old`` to
        ``change(old)``, record both, and date it: mtime unique and in the past (so the
        scanner takes it as settled, and no two writes share a stat). Reading, writing and
        dating go through one descriptor, so a sync renaming a file into place meanwhile
        cannot make us misattribute what we changed."""
        if how == "atomic":  # an editor's save: temp file, then rename over the original
            old = path.read_bytes()
            new = change(old)
            self.record_write(c, path, old, new)
            tmp = path.with_name(path.name + ".ferry-fuzz.tmp")
            with open(tmp, "wb") as f:
                f.write(new)
                self._date(f.fileno())
            os.replace(tmp, path)
            return new
        with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as f:
            old = f.read()
            new = change(old)
            self.record_write(c, path, old, new)
            keep = len(old) if how == "append" else 0
            assert new[:keep] == old[:keep]
            f.truncate(keep if how != "truncate" else len(new))
            f.seek(keep)
            rest = new[keep:] if how != "truncate" else b""
            if self.concurrent and rest:  # an app writing in two goes: a sync may look in between
                cut = self.rng.randrange(len(rest) + 1)
                f.write(rest[:cut])
                f.flush()
                # the writer's pause, shorter than the settle time: longer pauses cannot be told from a finished save
                time.sleep(self.rng.uniform(0, 0.05))  # (deliberate)
                rest = rest[cut:]
            f.write(rest)
            f.flush()
            self._date(f.fileno())
        return new

    def record_write(self, c: FuzzClient, path: Path, old: bytes, new: bytes) -> None:
        self.written.setdefault(hash_of(new), f"{c.name} step {self.step} {path.name} ({len(new)} B)")
        if old:  # (no device writes an empty file: an empty old content means we created it)
            self.destroyed.add(hash_of(old))
            self.destroyed_log.append(hash_of(old))

    def destroy(self, path: Path) -> None:
        """The user deletes or overwrites what is at ``path``: its contents may vanish everywhere."""
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                h = hash_of(f.read_bytes())
                self.destroyed.add(h)
                self.destroyed_log.append(h)

    def _date(self, fd: int) -> None:
        self.writes += 1
        when = self.mtime_base + self.writes * 1_000_003
        os.utime(fd, ns=(when, when))

    # --- the client's folder -------------------------------------------------------------

    def listing(self, c: FuzzClient) -> tuple[list[str], list[str]]:
        files, dirs = [], []
        for path, (kind, _, _) in sorted(replica(c.folder, strict=False).items()):
            (dirs if kind == "dir" else files).append(path)
        return files, dirs

    def disk(self, c: FuzzClient, path: str) -> Path:
        return c.folder / path.lstrip("/")

    def operate(self, c: FuzzClient) -> None:
        ops: list[tuple[str, int]] = [("create", 20), ("edit", 14), ("save", 6), ("append", 9),
                                      ("truncate", 4), ("delete", 8), ("rename", 8), ("move", 8),
                                      ("mkdir", 7), ("rmdir", 3), ("chmod", 2), ("replace", 3)]  # fmt: skip
        names, weights = zip(*ops, strict=True)
        for _ in range(10):  # an operation that does not apply here: draw another
            op = self.rng.choices(names, weights)[0]
            try:
                line = getattr(self, f"op_{op}")(c)
            except OSError as e:
                if not self.concurrent:
                    raise
                self.note(f"{c.name} {op}: raced with the running sync ({e}); given up")
                return
            if line:
                self.note(f"{c.name} {op} {line}")
                self.count(op)
                return

    def _pick(self, items: list[str]) -> str | None:
        return self.rng.choice(items) if items else None

    def _pick_hot(self, items: list[str]) -> str | None:
        """Like :meth:`_pick`, but half the time among paths some client touched lately
        (so one file gets moved and edited, or edited on two devices, more often)."""
        hot = [p for p in items if any(p == h or p.startswith(h + "/") for h in self.recent)]
        path = self._pick(hot if hot and self.rng.random() < 0.5 else items)
        if path is not None:
            self.touch(path)
        return path

    def touch(self, path: str) -> None:
        self.recent = [*[p for p in self.recent if p != path], path][-6:]

    def _free_name(self, c: FuzzClient, folder: str, pool: list[str]) -> str | None:
        base = "" if folder == "/" else folder
        free = [f"{base}/{n}" for n in pool if not self.disk(c, f"{base}/{n}").exists()]
        return self._pick(free)

    def _depth(self, path: str) -> int:
        return path.count("/")

    def op_create(self, c: FuzzClient) -> str | None:
        _, dirs = self.listing(c)
        folder = self._pick(["/", "/", *[d for d in dirs if self._depth(d) < MAX_DEPTH]]) or "/"
        path = self._free_name(c, folder, FILE_NAMES)
        if path is None:
            return None
        data = self.content(c, "create")
        self.touch(path)
        self.put(c, self.disk(c, path), lambda _old: data)
        return f"{path} ({len(data)} B)"

    def op_edit(self, c: FuzzClient, how: str = "inplace") -> str | None:
        files, _ = self.listing(c)
        path = self._pick_hot(files)
        if path is None:
            return None
        data = self.content(c, "edit")
        self.put(c, self.disk(c, path), lambda _old: data, how)
        return f"{path} ({len(data)} B)"

    def op_save(self, c: FuzzClient) -> str | None:
        return self.op_edit(c, "atomic")

    def op_append(self, c: FuzzClient) -> str | None:
        files, _ = self.listing(c)
        path = self._pick_hot(files)
        if path is None:
            return None
        extra = self.content(c, "append")[: self.rng.randrange(40, 2000)]
        new = self.put(c, self.disk(c, path), lambda old: old + extra, "append")
        return f"{path} (+{len(extra)} B = {len(new)} B)"

    def op_truncate(self, c: FuzzClient) -> str | None:
        files, _ = self.listing(c)
        path = self._pick_hot(files)
        if path is None or self.disk(c, path).stat().st_size < 2:
            return None
        # never to empty: no device writes b"", so an empty file anywhere is torn content (I3)
        new = self.put(c, self.disk(c, path), lambda old: old[: self.rng.randrange(1, max(2, len(old)))],
                       "truncate")  # fmt: skip
        return f"{path} (to {len(new)} B)"

    def op_delete(self, c: FuzzClient) -> str | None:
        files, _ = self.listing(c)
        path = self._pick_hot(files)
        if path is None:
            return None
        self.destroy(self.disk(c, path))
        self.disk(c, path).unlink()
        return path

    def op_rename(self, c: FuzzClient) -> str | None:
        files, dirs = self.listing(c)
        src = self._pick_hot(files + dirs)
        if src is None:
            return None
        kind_pool = DIR_NAMES if src in dirs else FILE_NAMES
        dst = self._free_name(c, parent_of(src), kind_pool)
        if dst is None:
            return None
        os.rename(self.disk(c, src), self.disk(c, dst))
        self.touch(dst)
        return f"{src} -> {dst}"

    def op_move(self, c: FuzzClient) -> str | None:
        files, dirs = self.listing(c)
        src = self._pick_hot(files + dirs)
        if src is None:
            return None
        height = max((self._depth(d) - self._depth(src) for d in dirs if d == src or d.startswith(src + "/")),
                     default=0)  # fmt: skip
        targets = [
            d
            for d in ["/", *dirs]
            if d != parent_of(src)
            and d != src
            and not d.startswith(src + "/")
            and self._depth(d) + 1 + height <= MAX_DEPTH + 1
        ]
        folder = self._pick(targets)
        if folder is None:
            return None
        name = src.rsplit("/", 1)[1]
        dst = ("" if folder == "/" else folder) + "/" + name
        if self.disk(c, dst).exists():
            dst = self._free_name(c, folder, DIR_NAMES if src in dirs else FILE_NAMES)
            if dst is None:
                return None
        os.rename(self.disk(c, src), self.disk(c, dst))
        self.touch(dst)
        return f"{src} -> {dst}"

    def op_chmod(self, c: FuzzClient) -> str | None:
        files, _ = self.listing(c)
        path = self._pick_hot(files)
        if path is None:
            return None
        disk = self.disk(c, path)
        mode = disk.stat().st_mode ^ 0o111
        disk.chmod(mode & 0o777)
        return f"{path} {'+x' if mode & 0o100 else '-x'}"

    def op_mkdir(self, c: FuzzClient) -> str | None:
        _, dirs = self.listing(c)
        folder = self._pick(["/", *[d for d in dirs if self._depth(d) < MAX_DEPTH]]) or "/"
        path = self._free_name(c, folder, DIR_NAMES)
        if path is None:
            return None
        self.disk(c, path).mkdir()
        return path

    def op_rmdir(self, c: FuzzClient) -> str | None:
        _, dirs = self.listing(c)
        path = self._pick_hot(dirs)
        if path is None:
            return None
        self.destroy(self.disk(c, path))
        shutil.rmtree(self.disk(c, path))
        return path

    def op_replace(self, c: FuzzClient) -> str | None:
        """A file becomes a folder of the same name (with a file in it), or a folder a file."""
        files, dirs = self.listing(c)
        path = self._pick_hot(files + [d for d in dirs if self._depth(d) < MAX_DEPTH])
        if path is None:
            return None
        disk = self.disk(c, path)
        self.destroy(disk)
        if disk.is_dir():
            shutil.rmtree(disk)
            data = self.content(c, "replace")
            self.put(c, disk, lambda _old: data)
            return f"{path}: folder -> file ({len(data)} B)"
        disk.unlink()
        disk.mkdir()
        inside = f"{path}/{self.rng.choice(FILE_NAMES)}"
        data = self.content(c, "replace")
        self.touch(inside)
        self.put(c, self.disk(c, inside), lambda _old: data)
        return f"{path}: file -> folder, with {inside} ({len(data)} B)"

    # --- syncing ---------------------------------------------------------------------------

    def saved(self, c: FuzzClient) -> dict[bytes, str]:
        """What a sync starting now sees: every file content in the folder.
        Each must be something a device wrote (I3, checked as we go)."""
        seen = {}
        for path, (kind, h, _) in replica(c.folder).items():
            if kind == "file" and h is not None:
                assert h in self.written, self.fail(f"{c.name}: {path} has content no device wrote (I3)")
                seen[h] = f"{c.name} had it at {path} when a sync started at step {self.step}"
        return seen

    def finished(self, seen: dict[bytes, str], since: int | None = None) -> None:
        """A sync that started with ``seen`` finished: those contents must survive, except
        any the user destroyed while it ran (``since``: length of destroyed_log at its start)."""
        gone = set(self.destroyed_log[since:]) if since is not None else set()
        for h, where in seen.items():
            if h not in gone:
                self.must_keep.setdefault(h, where)

    def sync(self, c: FuzzClient) -> list[Any] | None:
        """One in-process `sync --once`; returns the actions run (None: the server was unreachable)."""
        seen = self.saved(c)
        FixedClock.at = FixedClock.start + dt.timedelta(seconds=self.step)
        engine = Engine(c.folder, c.device.home, c.creds, retry_for=10.0 if self.server_up else 0.3)
        cycles: list[list[Any]] = []
        cycle = engine.cycle

        async def counted() -> list[Any]:
            done = await cycle()
            cycles.append(done)
            return done

        engine.cycle = counted  # type: ignore[method-assign]
        try:
            ok = asyncio.run(engine.run_once())
        except ConnectionLost:
            assert not self.server_up, self.fail(f"{c.name} could not reach the server while it was up")
            self.note(f"{c.name} sync: server unreachable")
            self.count("sync (server down)")
            return None
        finally:
            engine.state.close()
        assert self.server_up, self.fail(f"{c.name} synced while the server was stopped")
        shown = [", ".join(_show(a) for a in done) for done in cycles if done]
        error = engine.status.get("last_error")
        self.note(f"{c.name} sync: " + (" | ".join(_collapse(shown)) or "nothing to do")
                  + (f"  [last error: {error}]" if error else ""))  # fmt: skip
        assert ok, self.fail(f"{c.name}: no fixed point after {engine_mod.MAX_ROUNDS} rounds (I7)")
        self.finished(seen)
        self.count("sync")
        return [a for done in cycles for a in done]

    def killed_sync(self, c: FuzzClient) -> None:
        """`ferry sync --once` as a process, SIGKILLed after a random short delay;
        meanwhile the user may go on editing that folder."""
        self.processes([c], kill=c, edits=self.rng.choice([0, 0, 1, 2]))

    def race(self) -> None:
        """Two or three clients run `ferry sync --once` at the same time (commits race on
        the server); meanwhile users edit, and one process may be killed."""
        online = [c for c in self.clients if c.offline_until <= self.step]
        if len(online) < 2:
            return
        racers = self.rng.sample(online, self.rng.randrange(2, len(online) + 1))
        kill = self.rng.choice(racers) if self.rng.random() < 0.3 else None
        self.processes(racers, kill=kill, edits=self.rng.randrange(0, 4))

    def processes(self, racers: list[FuzzClient], kill: FuzzClient | None, edits: int) -> None:
        seen = {c.name: self.saved(c) for c in racers}
        since = len(self.destroyed_log)
        procs = {c.name: c.device.popen("sync", str(c.folder), "--once") for c in racers}
        try:
            names = ", ".join(c.name for c in racers)
            self.note(
                f"sync --once processes start: {names}" + (f"; {kill.name} to be killed" if kill else "")
            )
            started = time.monotonic()
            kill_at = self.rng.uniform(0.05, 1.0)
            moments = sorted(self.rng.uniform(0, 1.0) for _ in range(edits))
            self.concurrent = True
            try:
                for moment in moments:  # the user edits while the syncs run
                    time.sleep(max(0.0, moment - (time.monotonic() - started)))  # deliberate timing
                    self.operate(self.rng.choice(racers))
            finally:
                self.concurrent = False
            if kill is not None:
                proc = procs[kill.name]
                try:
                    proc.wait(max(0.0, kill_at - (time.monotonic() - started)))  # the deliberate kill delay
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            for c in racers:
                proc = procs[c.name]
                _, err = proc.communicate(timeout=120)
                if proc.returncode == 0:
                    self.finished(seen[c.name], since)
                    self.note(f"{c.name} sync --once (process) finished (rc 0)")
                    self.count("process sync finished")
                else:
                    killed = proc.returncode == -signal.SIGKILL
                    tail = err.strip().splitlines()[-1:] if not killed else []
                    self.note(f"{c.name} sync --once (process) " + (f"killed after {kill_at:.2f} s" if killed else
                              f"failed (rc {proc.returncode})") + (f": {tail[0]}" if tail else ""))  # fmt: skip
                    self.count("process sync killed" if killed else "process sync failed")
                    assert killed or not self.server_up, self.fail(
                        f"{c.name}: `ferry sync --once` failed with the server up: {err}"
                    )
        finally:  # (on a failure, no process is left behind)
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()

    def bounced_sync(self, c: FuzzClient) -> None:
        """The server restarts while `ferry sync --once` runs; the client reconnects (retry 5 s)."""
        seen = self.saved(c)
        delay = self.rng.uniform(0.05, 0.8)
        proc = c.device.popen("sync", str(c.folder), "--once")
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            pass
        self.server.stop()
        self.server.start()
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            self.finished(seen)
        self.note(f"{c.name} sync --once (process), server restarted after {delay:.2f} s: rc {proc.returncode}"
                  + ("" if proc.returncode == 0 else f": {err.strip().splitlines()[-1:]}"))  # fmt: skip
        self.count("server restart during sync")

    # --- the run -----------------------------------------------------------------------------

    def take_step(self) -> None:
        c = self.rng.choice(self.clients)
        if self.server_down_until >= 0 and self.step >= self.server_down_until:
            with self.timed("server start"):
                self.server.start()
            self.server_down_until = -1
            self.note("server started again")
        r = self.rng.random()
        offline = c.offline_until > self.step  # offline: this client does not sync at all
        if r < 0.52:
            with self.timed("operations"):
                self.operate(c)
        elif r < 0.84:
            if not offline:
                with self.timed("syncs in-process"):
                    self.sync(c)
        elif r < 0.89:
            c.offline_until = self.step + self.rng.randrange(5, 30)
            self.note(f"{c.name} goes offline until step {c.offline_until}")
        elif r < 0.92:
            if not offline:
                with self.timed("syncs killed"):
                    self.killed_sync(c)
        elif r < 0.955:
            if self.server_up:
                with self.timed("races"):
                    self.race()
        elif r < 0.98:
            if self.server_up:
                with self.timed("server stop"):
                    self.server.stop()
                self.server_down_until = self.step + self.rng.randrange(3, 15)
                self.note(f"server stopped until step {self.server_down_until}")
                self.count("server down")
        elif self.server_up and not offline:
            with self.timed("server restart during sync"):
                self.bounced_sync(c)

    @contextlib.contextmanager
    def timed(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.monotonic() - started

    def settle(self) -> None:
        """Server up, every client online: round-robin syncs until a whole round does nothing."""
        if not self.server_up:
            self.server.start()
            self.server_down_until = -1
            self.note("server started again")
        self.note("--- final: all online, round-robin until quiet ---")
        for rounds in range(1, FINAL_ROUNDS + 1):
            self.step += 1
            busy = False
            for c in self.clients:
                actions = self.sync(c)
                busy = busy or bool(actions)
            if not busy:
                self.note(f"quiet after {rounds} rounds")
                return
        raise AssertionError(self.fail(f"still syncing after {FINAL_ROUNDS} final rounds (I1/I7)"))


class FixedClock(dt.datetime):
    """The engine's clock (conflicted-copy names): one second per step, so a seed replays."""

    start = dt.datetime(2026, 1, 1, 12, 0, 0)
    at = start

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> FixedClock:  # type: ignore[override]
        t = cls.at if tz is None else cls.at.replace(tzinfo=tz)
        return cls(t.year, t.month, t.day, t.hour, t.minute, t.second, tzinfo=t.tzinfo)


def _collapse(cycles: list[str]) -> list[str]:
    """One entry per cycle, a run of identical cycles as one entry with a count."""
    out: list[str] = []
    for text, run in itertools.groupby(cycles):
        n = len(list(run))
        out.append(text if n == 1 else f"{text} (x{n} cycles)")
    return out


def _show(action: Any) -> str:
    args = ", ".join(str(getattr(action, f.name)) for f in dataclasses.fields(action))
    return f"{type(action).__name__}({args})"


class _LogToOplog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.sim: Sim | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.sim is not None:
            self.sim.note(f"    engine {record.levelname.lower()}: {record.getMessage()}")


@pytest.fixture
def oplog_handler() -> Iterator[_LogToOplog]:
    handler = _LogToOplog()
    logger = logging.getLogger("ferry.sync")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


# --- what the server holds -----------------------------------------------------------------


async def _server_facts(url: str) -> tuple[list[asyncpg.Record], list[bytes]]:
    conn = await asyncpg.connect(url)
    try:
        ns = await conn.fetchval("SELECT root_ns FROM users WHERE name = 'u'")
        heads = await conn.fetch(
            "SELECT h.path, h.parent, h.kind, h.file_id, h.version_id, v.kind AS vkind, v.path AS vpath,"
            " v.deleted, v.content_hash, v.executable, v.file_id AS vfile"
            " FROM heads h LEFT JOIN versions v ON v.namespace_id = h.namespace_id"
            " AND v.version_id = h.version_id WHERE h.namespace_id = $1 ORDER BY h.path",
            ns,
        )
        history = await conn.fetch(
            "SELECT DISTINCT content_hash FROM versions WHERE namespace_id = $1 AND kind = 'file'", ns
        )
        return list(heads), [bytes(r["content_hash"]) for r in history if r["content_hash"] is not None]
    finally:
        await conn.close()


def check_invariants(sim: Sim) -> None:
    assert sim.server.database_url is not None
    heads, history = asyncio.run(_server_facts(sim.server.database_url))
    problems: list[str] = []

    # I4: the server's tree is well-formed
    kinds = {r["path"]: r["kind"] for r in heads}
    ids: dict[int, str] = {}
    for r in heads:
        path = r["path"]
        if r["vkind"] is None or r["deleted"] or r["vpath"] != path or r["vkind"] != r["kind"]:
            problems.append(f"server head {path} points at a bad version ({dict(r)})")
        if r["vfile"] is not None and r["vfile"] != r["file_id"]:
            problems.append(f"server head {path}: file id {r['file_id']} but its version is of {r['vfile']}")
        if r["parent"] != parent_of(path) or (r["parent"] != "/" and kinds.get(r["parent"]) != "dir"):
            problems.append(f"server head {path}: orphan (parent {r['parent']!r} is not a folder)")
        if r["file_id"] in ids:
            problems.append(f"file id {r['file_id']} at two paths: {ids[r['file_id']]} and {path}")
        ids[r["file_id"]] = path
    server_tree: Replica = {
        r["path"]: (r["kind"], bytes(r["content_hash"]) if r["content_hash"] else None, r["executable"])
        for r in heads
    }

    # I1: every replica equals the server, and each client's state agrees
    for c in sim.clients:
        mine = replica(c.folder)
        for path in sorted(mine.keys() | server_tree.keys()):
            if mine.get(path) != server_tree.get(path):
                problems.append(f"{c.name} differs from the server at {path}: "
                                f"{_brief(mine.get(path))} vs {_brief(server_tree.get(path))}")  # fmt: skip
        leftovers = list((c.folder / STAGING).iterdir()) if (c.folder / STAGING).exists() else []
        if leftovers:
            problems.append(f"{c.name}: staged downloads left behind: {leftovers}")
        state = State(c.device.home / "folders" / folder_id(c.folder.resolve()) / "state.db")
        try:
            want = {r["path"]: (r["version_id"], r["file_id"]) for r in heads}
            for name, nodes in (("synced", state.synced_tree()), ("remote", state.remote_tree())):
                got = {p: (n.version, n.file_id) for p, n in nodes.items()}
                if got != want:
                    diff = sorted(p for p in got.keys() | want.keys() if got.get(p) != want.get(p))
                    problems.append(f"{c.name}: state's {name} tree is not the server's at {diff[:10]}")
        finally:
            state.close()

    # I3: no content that no device wrote, on a replica or anywhere in the server's history
    for c in sim.clients:
        for path, (kind, h, _) in replica(c.folder).items():
            if kind == "file" and h not in sim.written:
                problems.append(f"{c.name}: {path} has content no device wrote ({h.hex()[:12] if h else h})")
    for h in history:
        if h not in sim.written:
            problems.append(f"server history has content no device wrote ({h.hex()[:12]})")

    # I2: every edit a finished sync saw is at a path, in a conflicted copy, or in history;
    # and if no user ever deleted or overwrote it anywhere, it is still at a path
    live = {n[1] for n in server_tree.values() if n[0] == "file"}
    for h, where in sim.must_keep.items():
        if h not in live and h not in history:
            problems.append(f"lost edit {h.hex()[:12]} ({sim.written.get(h, '?')}): {where}")
        elif h not in live and h not in sim.destroyed:
            problems.append(f"edit {h.hex()[:12]} ({sim.written.get(h, '?')}) is only in history, yet no "
                            f"device deleted or overwrote it: {where}")  # fmt: skip

    assert not problems, sim.fail("invariants violated:\n  " + "\n  ".join(problems))


def _brief(node: tuple[str, bytes | None, bool] | None) -> str:
    if node is None:
        return "absent"
    kind, h, x = node
    return "folder" if kind == "dir" else f"file {h.hex()[:12] if h else h}{' +x' if x else ''}"


# --- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", _seeds(), ids=lambda s: f"seed{s}")
def test_random_operations_converge_without_losing_edits(
    seed: int,
    make_server: Callable[..., FerryServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    oplog_handler: _LogToOplog,
) -> None:
    print(f"sync model test: seed {seed}, {STEPS} steps")
    random.seed(seed)  # the engine's own jitter and name suffixes, as far as they go
    monkeypatch.setattr(clock_mod.SystemClock, "now", staticmethod(FixedClock.now))
    server = make_server("file")
    assert server.admin("user", "add", "u", "--password-stdin", stdin="pw\n").returncode == 0
    clients = []
    for i in range(CLIENTS):
        device = Device(tmp_path / f"home{i}", server).login("u", "pw", device=f"dev{i}")
        folder = tmp_path / f"Ferry{i}"
        folder.mkdir()
        clients.append(FuzzClient(i, device, folder, load_credentials(device.home)))
    sim = Sim(seed, server, clients, random.Random(seed))
    oplog_handler.sim = sim
    started = time.monotonic()
    try:
        for sim.step in range(STEPS):
            sim.take_step()
        with sim.timed("final"):
            sim.settle()
            check_invariants(sim)
    finally:
        (tmp_path / "oplog.txt").write_text("\n".join(sim.log) + "\n")
        oplog_handler.sim = None
    print(f"seed {seed}: {time.monotonic() - started:.1f} s, {len(sim.written)} contents written, "
          f"{len(sim.must_keep)} had to survive; {sim.stats}; seconds: "
          f"{ {k: round(v, 1) for k, v in sim.seconds.items()} }")  # fmt: skip
