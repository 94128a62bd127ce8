"""One simulated world: a :class:`SimServer`, several whole clients (the real
:class:`client.engine.Engine`, each on its own :class:`MemDisk`, behind the
simulated network) and their users, driven by a list of operations.

The operations are drawn from the seed before the run (tests/sim/scenario.py);
one that does not apply when its turn comes (deleting what is not there)
does nothing, so any subset of a failing list is again a valid run.

The oracle follows ``tests/e2e/test_sync_model.py``: every write's bytes are
unique; ``written`` holds every content a user wrote; a content on a device
when a sync *starts* there must survive (``must_keep``) if that sync finishes,
unless the user destroyed it on that device while the sync ran; every content
a user (or a crash) deleted or overwrote is in ``destroyed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import logging
import os
import random
import shutil
import signal
import tempfile
import threading
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.engine import Engine, SyncError
from client.home import Credentials
from client.transfer import Remote
from client.transport import ConnectionLost
from protocol import messages as m
from protocol.chunking import chunk_stream
from protocol.errors import ProtocolError
from protocol.hashing import block_hash, content_hash
from tests.sim.loop import SimClock, SimLoop
from tests.sim.memdisk import MemDisk
from tests.sim.network import Faults, Network
from tests.sim.scenario import SCENARIO, Op, Setup, draw
from tests.sim.server import OWNER, SHARED_NS, SimServer

ROOT = "/home/user/Ferry"
FINAL_ROUNDS = 8
RETRY_FOR = 3.0  # s a sync keeps reconnecting before it gives up
REAL_SECONDS = 60  # a seed takes well under a second; one that runs this long never waits


def digest(data: bytes) -> bytes:
    """The content hash a scan gives these bytes."""
    return content_hash(b.hash for b in chunk_stream(io.BytesIO(data)))


@dataclass
class Client:
    n: int
    disk: MemDisk
    home: Path
    creds: Credentials
    task: asyncio.Task[bool] | None = None
    syncs: int = 0

    @property
    def device(self) -> str:
        return self.creds.device


@dataclass
class Result:
    violations: list[str]
    state_hash: str
    log: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)


class World:
    def __init__(self, seed: int, ops: list[Op], setup: Setup, tmp: Path) -> None:
        self.seed = seed
        self.ops = ops
        self.setup = setup
        self.rng = random.Random(seed * 7919 + 1)  # the world's own choices (network, contents)
        self.clock: SimClock | None = None
        self.server = SimServer()
        self.net = Network(self.server, self.rng, setup.faults)
        self.tmp = tmp
        self.clients: list[Client] = []
        self.written: set[bytes] = set()
        self.destroyed: dict[int, dict[bytes, int]] = {}  # client -> content -> op index it was destroyed at
        self.locked: dict[
            int, dict[bytes, int]
        ] = {}  # client -> content -> op index it was made unreadable at
        self.must_keep: set[bytes] = set()
        self.owner_destroyed: set[bytes] = set()  # contents the sharing owner deleted or overwrote
        self.violations: list[str] = []
        self.log: list[str] = []
        self.step = 0
        self.writes = 0
        self.crashes = 0
        self.finished_syncs = 0

    # --- set-up ---------------------------------------------------------------------------

    def _make_clients(self) -> None:
        assert self.clock is not None
        clock = self.clock
        for n in range(self.setup.clients):
            disk = MemDisk(self.setup.modes[n], clock.time_ns)
            disk.mkdir(ROOT, parents=True)
            disk.barrier()
            creds = Credentials("sim://server", "user", f"token{n}", n + 1, f"dev{n}")
            home = self.tmp / f"home{n}"
            self.clients.append(Client(n, disk, home, creds))
            self.destroyed[n] = {}
            self.locked[n] = {}
        self.server.now_ns = clock.time_ns

    # --- users ------------------------------------------------------------------------------

    def _content(self, c: Client | None, tag: str) -> bytes:
        self.writes += 1
        size = self.rng.choice([1, 8, 100, 3000])
        who = f"c{c.n}" if c is not None else "owner"
        unit = f"s{self.seed} {who} op{self.step} w{self.writes} {tag}\n".encode()
        data = (unit * (size // len(unit) + 1))[: max(size, len(unit))]
        self.written.add(data)
        return data

    def _destroy(self, c: Client, data: bytes | None) -> None:
        if data is not None:
            self.destroyed[c.n][data] = self.step  # the latest time: a crash may bring it back

    def _contents_under(self, c: Client, disk_path: str) -> list[bytes]:
        try:
            if c.disk.lstat(disk_path).st_mode & 0o040000:
                below = c.disk.files(disk_path).values()
                return [d for kind, d, _x, _m in below if kind == "file" and d is not None]
            return [c.disk.peek(disk_path)]
        except OSError:
            return []

    def _files(self, c: Client) -> dict[str, tuple[str, bytes | None, bool, int]]:
        return c.disk.files(ROOT)

    def _existing(self, c: Client, op: Op) -> str:
        """``op.path``, or if nothing is there, a path that is (picked by the op): most
        operations drawn blind would otherwise find nothing to act on."""
        if op.kind in ("write", "save", "mkdir") or c.disk.exists(ROOT + op.path):
            return op.path
        paths = sorted(p for p in self._files(c) if not p.startswith("/.ferry-"))
        return paths[zlib.crc32(str(op).encode()) % len(paths)] if paths else op.path

    def user_op(self, c: Client, op: Op) -> None:
        disk = c.disk
        path = self._existing(c, op)
        if path != op.path:
            self.log.append(f"    (on {path!a}: nothing at {op.path!a})")
        target = ROOT + path
        try:
            match op.kind:
                case "write":
                    disk.mkdir(target.rsplit("/", 1)[0], parents=True, exist_ok=True)
                    old = self._contents_under(c, target)
                    disk.write_bytes(target, self._content(c, "write"))
                    for d in old:
                        self._destroy(c, d)
                case "save":  # an editor's atomic save: a temp file renamed over the old one
                    disk.mkdir(target.rsplit("/", 1)[0], parents=True, exist_ok=True)
                    old = self._contents_under(c, target)
                    tmp = target + ".tmp"
                    disk.write_bytes(tmp, self._content(c, "save"))
                    try:
                        disk.rename(tmp, target)
                    except OSError:
                        disk.unlink(tmp)
                        raise
                    for d in old:
                        self._destroy(c, d)
                case "append":
                    old = disk.read_bytes(target)
                    data = old + self._content(c, "append")
                    self.written.add(data)
                    disk.write_bytes(target, data)
                    self._destroy(c, old)
                case "delete":
                    old = self._contents_under(c, target)
                    self._remove(disk, target)
                    for d in old:
                        self._destroy(c, d)
                case "rename":
                    dst = ROOT + op.to
                    disk.mkdir(dst.rsplit("/", 1)[0], parents=True, exist_ok=True)
                    old = self._contents_under(c, dst) if not disk.samefile(target, dst) else []
                    disk.rename(target, dst)
                    for d in old:
                        self._destroy(c, d)
                case "mkdir":
                    disk.mkdir(target, parents=True, exist_ok=True)
                case "chmodx":
                    mode = disk.lstat(target).st_mode
                    if mode & 0o040000 or not mode & 0o400:
                        return
                    disk.chmod(target, (mode ^ 0o100) & 0o777)
                case "lock":
                    if disk.lstat(target).st_mode & 0o040000:
                        return
                    self.locked[c.n][disk.peek(target)] = self.step
                    disk.chmod(target, 0)
                case "unlock":
                    if disk.lstat(target).st_mode & 0o777 == 0:
                        disk.chmod(target, 0o644)
            if self.rng.random() < 0.5:  # some apps make their saves durable
                disk.barrier()
        except OSError as e:
            self.log.append(f"    ({op.kind} did nothing: {e.strerror})")

    def _remove(self, disk: MemDisk, path: str) -> None:
        if not disk.lstat(path).st_mode & 0o040000:
            disk.unlink(path)
            return
        for name in disk.listdir(path):
            self._remove(disk, path + "/" + name)
        disk.rmdir(path)

    # --- syncs ------------------------------------------------------------------------------

    def _engine(self, c: Client) -> Engine:
        assert self.clock is not None
        remote = Remote(c.creds, RETRY_FOR, dial=self.net.dialer(c.device), clock=self.clock)
        engine = Engine(Path(ROOT), c.home, c.creds, retry_for=RETRY_FOR, disk=c.disk, clock=self.clock,
                        remote=remote)  # fmt: skip
        cycle = engine.cycle

        async def logged() -> list[Any]:  # each cycle's plan goes into the operation log
            actions = await cycle()
            if actions:
                self.log.append(f"      c{c.n} cycle: " + ", ".join(map(str, actions)))
            return actions

        engine.cycle = logged  # type: ignore[method-assign]
        return engine

    def start_sync(self, c: Client) -> None:
        if c.task is not None and not c.task.done():
            return
        start = self.step
        seen = {d for p, (kind, d, _x, mode) in self._files(c).items()
                if kind == "file" and mode & 0o400 and not p.startswith("/.ferry-")}  # fmt: skip
        for torn in seen - self.written:  # I3 on the device, as each sync starts
            self.violations.append(f"I3 c{c.n} holds content no device wrote: {torn[:40]!r}")
        # what is in a folder shared read-only is kept here, not sent: not the sync's to keep
        viewer = {self.server.mount} if self.server.mount and self.server.role == "viewer" else set()
        held = self._held(c, viewer)

        async def sync() -> bool:
            engine = self._engine(c)
            try:
                done = await engine.run_once()
            except Hang:
                raise
            except Exception as e:  # offline for longer than RETRY_FOR, a full disk, or a bug
                full = c.disk.capacity is not None  # the client must say so, and may stop
                expected = (
                    isinstance(e, ConnectionLost)
                    or (full and isinstance(e, OSError) and e.errno == errno.ENOSPC)
                    or (full and isinstance(e, SyncError) and "is full" in str(e))
                )
                if not expected:
                    self.violations.append(f"c{c.n}: sync raised {type(e).__name__}: {e}")
                self.log.append(f"    c{c.n} sync ended: {type(e).__name__}: {e}")
                return False
            finally:
                engine.state.close()
            if self.server.mount and self.server.role == "viewer":
                held.update(self._held(c, {self.server.mount}))
            if done:
                self.finished_syncs += 1
                # what the user destroyed, or made unreadable, on this device while the sync ran
                gone = {d for d, at in self.destroyed[c.n].items() if at >= start}
                gone |= {d for d, at in self.locked[c.n].items() if at >= start}
                self.must_keep |= {d for d in seen if d is not None} - gone - held
            self.log.append(f"    c{c.n} sync finished: {'fixed point' if done else 'still changing'}")
            return done

        c.syncs += 1
        c.task = asyncio.get_running_loop().create_task(sync())

    def _held(self, c: Client, mounts: set[str]) -> set[bytes]:
        return {d for p, (kind, d, _x, _m) in self._files(c).items()
                if kind == "file" and d is not None and any(p.startswith(mount + "/") for mount in mounts)}  # fmt: skip

    async def crash(self, c: Client) -> None:
        self.crashes += 1
        if c.task is not None and not c.task.done():
            c.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await c.task
        before = {p: d for p, (kind, d, _x, _m) in self._files(c).items() if kind == "file"}
        c.disk.crash()
        after = {p: d for p, (kind, d, _x, _m) in self._files(c).items() if kind == "file"}
        for d in set(before.values()) - set(after.values()):
            self._destroy(c, d)

    # --- the run ----------------------------------------------------------------------------

    async def main(self) -> None:
        self._make_clients()
        for i, op in enumerate(self.ops):
            self.step = i
            if op.wait:
                await asyncio.sleep(op.wait)
            c = self.clients[op.client % len(self.clients)]
            self.log.append(f"{i:3d} {op}")
            match op.kind:
                case "sync":
                    self.start_sync(c)
                case "offline":
                    self.net.go_offline(c.device)
                case "online":
                    self.net.offline.discard(c.device)
                case "full":
                    c.disk.capacity = c.disk._used() + self.rng.choice([0, 50, 500])
                case "unfull":
                    c.disk.capacity = None
                case "crash":
                    await self.crash(c)
                case "share" | "unshare" | "role" | "owner_write" | "owner_delete":
                    self.share_op(op)
                case _:
                    self.user_op(c, op)
        await self.quiesce()

    def share_op(self, op: Op) -> None:
        server = self.server
        try:
            match op.kind:
                case "share" if server.mount is None:
                    server.share(self.rng.choice(["editor", "viewer"]))
                case "unshare":
                    server.unshare()
                case "role" if server.mount is not None:
                    server.set_role("viewer" if server.role == "editor" else "editor")
                case "owner_write":
                    self.owner_write(op.path)
                case "owner_delete":
                    shared = server.spaces[SHARED_NS]
                    if op.path in shared.heads:
                        self.owner_destroyed.update(self._server_contents(shared, op.path))
                        server.owner_change(lambda space: space.delete(op.path, None, None, OWNER))
        except ProtocolError as e:
            self.log.append(f"    ({op.kind} did nothing: {e.message})")
        self.log.append(f"    (shared: {server.mount} {server.role})" if server.mount else "    (not shared)")

    def owner_write(self, path: str) -> None:
        shared = self.server.spaces[SHARED_NS]
        head = shared.heads.get(path)
        data = self._content(None, "owner")
        h = block_hash(data)
        self.server.put_block(h, data)
        commit = m.FileCommit(path, head.version if head else None, len(data), self.clock.time_ns(), [h])  # type: ignore[union-attr]
        before = self._server_contents(shared, path)
        self.server.owner_change(lambda space: space.file(commit, OWNER))
        self.owner_destroyed.update(before)

    def _server_contents(self, space: Any, path: str) -> set[bytes]:
        hashes = {e.content_hash for p, e in space.heads.items() if p == path or p.startswith(path + "/")}
        return {d for d in self.written if digest(d) in hashes}

    async def quiesce(self) -> None:
        """Faults off, everyone online, every sync done; then sync round robin
        until a whole round changes nothing anywhere (I1, I7)."""
        self.step = len(self.ops)
        self.log.append("--- quiescence")
        self.net.faults = Faults(max_delay=0.01)
        self.net.offline.clear()
        if self.server.mount is not None and self.server.role == "viewer":
            self.server.set_role("editor")  # what a viewer kept back goes up now
        for c in self.clients:
            c.disk.capacity = None
            for p, (kind, _d, _x, mode) in self._files(c).items():
                if kind == "file" and not mode & 0o400:
                    c.disk.chmod(ROOT + p, 0o644)
            if c.task is not None:
                await asyncio.wait([c.task])
        for _ in range(FINAL_ROUNDS):
            before = self.snapshot()
            for c in self.clients:
                self.start_sync(c)
                assert c.task is not None
                if not await c.task:
                    self.violations.append(f"I7 c{c.n}: a sync with no faults and no edits did not finish")
            if self.snapshot() == before:
                return
        self.violations.append(f"I7: still changing after {FINAL_ROUNDS} rounds of syncs")

    def snapshot(self) -> str:
        h = hashlib.sha256()
        for path, e in sorted(self.server.tree().items()):
            h.update(repr((path, e.kind, e.content_hash, e.executable, e.version, e.file_id)).encode())
        for c in self.clients:
            for path, (kind, data, x, _m) in sorted(self._files(c).items()):
                h.update(repr((c.n, path, kind, data, x)).encode())
        return h.hexdigest()

    # --- the invariants ---------------------------------------------------------------------

    def check(self) -> None:
        v = self.violations
        heads = self.server.tree()
        history = [e for space in self.server.spaces.values() for e in space.history]
        written = {digest(d) for d in self.written}
        # I1: every replica is the server's tree
        server_tree = {p: (e.kind, e.content_hash, e.executable) for p, e in heads.items()}
        for c in self.clients:
            files = {_as_listed(c.disk, p): (k, digest(d) if d is not None else None, x)
                     for p, (k, d, x, _m) in self._files(c).items() if not p.startswith("/.ferry-")}  # fmt: skip
            if files != server_tree:
                diff = sorted(set(files.items()) ^ set(server_tree.items()))[:6]
                v.append(f"I1 c{c.n} ({c.disk.mode}) differs from the server: {diff}")
            staging = ROOT + "/.ferry-staging"
            if c.disk.exists(staging) and c.disk.listdir(staging):
                v.append(f"I4 c{c.n}: staged downloads left behind: {c.disk.listdir(staging)}")
        # I2: no lost edits; I5: nothing converged by deleting
        at_paths = {e.content_hash for e in heads.values() if e.kind == "file"}
        in_history = {e.content_hash for e in history if e.kind == "file"}
        ever_destroyed = set().union(*(d.keys() for d in self.destroyed.values())) | self.owner_destroyed
        for data in sorted(self.must_keep):
            h = digest(data)
            if h not in at_paths and h not in in_history:
                v.append(f"I2 lost edit: {data[:40]!r} is neither at a path nor in history")
            elif h not in at_paths and data not in ever_destroyed:
                v.append(f"I5 {data[:40]!r} was never deleted or overwritten but is at no path")
        # I3: no mixed content, on the server (heads and history) or any device
        for e in history:
            if e.kind == "file" and e.content_hash not in written:
                v.append(f"I3 server version {e.path} v{e.version} holds content no device wrote")
        # I4: well-formed trees, one path per file
        for space in self.server.spaces.values():
            ids: dict[int, str] = {}
            for p, e in space.heads.items():
                parent = p.rsplit("/", 1)[0] or "/"
                if parent != "/" and (parent not in space.heads or space.heads[parent].kind != "dir"):
                    v.append(f"I4 orphan in namespace {space.ns}: {p} has no parent folder")
                if e.file_id in ids:
                    v.append(f"I4 file {e.file_id} at two paths: {ids[e.file_id]} and {p}")
                ids[e.file_id] = p
        # I6: every block a version names is stored and hashes right
        for e in history:
            for b in e.blocks or []:
                data = self.server.blocks.get(b.hash)
                if data is None or block_hash(data) != b.hash:
                    v.append(f"I6 {e.path} v{e.version}: block {b.hash.hex()[:12]} missing or corrupt")
                    break


def _as_listed(disk: MemDisk, path: str) -> str:
    """A path as the client reads it: on a disk that finds names in any normal
    form the scanner takes a decomposed name as NFC; elsewhere it is what it is."""
    return unicodedata.normalize("NFC", path) if disk.mode != "posix" else path


def run(seed: int, ops: list[Op] | None = None, log_engine: bool = False, scenario: int = SCENARIO) -> Result:
    """Run one seed (with ``ops``, a subset of its operations, when shrinking)."""
    setup, drawn = draw(seed, scenario)
    ops = drawn if ops is None else ops
    outside = random.getstate()
    random.seed(seed)  # the engine's own jitter (backoff) and conflicted-name suffixes
    # each client's home (its SQLite state, its status file) is on a real disk: in memory
    # where there is one, as nothing there need outlive the run and fsync costs nothing
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix=f"ferry-sim-{seed}-", dir=shm))
    world = World(seed, ops, setup, tmp)
    loop = SimLoop()
    world.clock = SimClock(loop)
    sync_log = logging.getLogger("ferry.sync")
    handler = _ListHandler(world.log)
    level = sync_log.level
    sync_log.setLevel(logging.INFO if log_engine else logging.CRITICAL)
    sync_log.addHandler(handler)
    try:
        with _deadline(REAL_SECONDS):
            loop.run_until_complete(world.main())
        world.check()
    except Exception as e:  # a crash of the simulation itself is a failure of the seed too
        world.violations.append(f"the simulation raised {type(e).__name__}: {e}")
    finally:
        sync_log.removeHandler(handler)
        sync_log.setLevel(level)
        random.setstate(outside)
        _close(loop)
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {"ops": len(ops), "syncs": sum(c.syncs for c in world.clients), "finished_syncs": world.finished_syncs,
               "crashes": world.crashes, "frames": world.net.frames, "writes": world.writes,
               "must_keep": len(world.must_keep), "virtual_s": int(loop.now)}  # fmt: skip
    header = [
        f"seed {seed} (scenario {scenario}): {setup.clients} clients, disks {setup.modes}, {setup.faults}"
    ]
    return Result(world.violations, world.snapshot(), header + world.log, figures)


class Hang(Exception):
    """A seed ran for longer than REAL_SECONDS of real time: a loop that never waits."""


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread after ``seconds`` (elsewhere: no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def hang(*_: object) -> None:
        raise Hang(f"I7: still running after {seconds} s of real time")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _ListHandler(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(f"      engine: {record.getMessage()}")


def _close(loop: SimLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def shrink(
    seed: int, fails: Callable[[list[Op]], bool], scenario: int = SCENARIO, budget: int = 60
) -> list[Op]:
    """Drop operations while the run still fails: halves, then quarters... then one by one."""
    ops = draw(seed, scenario)[1]
    chunk = len(ops) // 2
    while chunk >= 1 and budget > 0:
        i = 0
        while i < len(ops) and budget > 0:
            trial = ops[:i] + ops[i + chunk :]
            budget -= 1
            if trial and fails(trial):
                ops = trial
            else:
                i += chunk
        chunk //= 2
    return ops
