"""The sync engine: keeps one local folder identical to the user's tree on the server.

Theory of operation. A *cycle* pulls the server's journal since the cursor
into the remote tree, scans the disk into the local tree, asks the pure
planner (:mod:`client.planner`) what to do given local, remote and synced
(the merge base), and executes those actions in order. Each action checks
its own precondition just before it touches anything (the local file is
still the one the scan saw; the server version is still the parent), and
records its outcome in the state only after the disk or the server changed.
A failed or outdated action is skipped and the next cycle re-plans from
fresh facts, so a crash, a conflict or a dropped connection costs a cycle,
never an edit. Cycles repeat until the plan is empty (``--once``) or, in live
mode, whenever the watcher sees local changes or the server pushes a hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import random
import sqlite3
import stat as st
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from client import diskspace, durable, fs, mounts, names
from client import planner as p
from client.clock import Clock, SystemClock
from client.home import Credentials
from client.lan.node import LanNode, LanOptions, Scope, Seen
from client.scanner import (
    HINT_OVER,
    INTERNAL_PREFIX,
    SETTLE_S,
    Scan,
    enable_writer_checks,
    rescan,
    scan,
    settle_left,
)
from client.state import Observed, State
from client.transfer import (
    STAGING_PREFIX,
    UMASK,
    KnownBlocks,
    LocalCopy,
    Precopied,
    Prefetched,
    Remote,
    commit_blocks,
    fetch,
    place,
    precopy,
    prefetch,
    send_file,
)
from client.transport import ConnectionLost, backoff_delays
from protocol import failpoints
from protocol import messages as m
from protocol.chunking import chunk_bytes
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import block_hash, content_hash
from protocol.paths import ancestors, is_within

log = logging.getLogger("ferry.sync")
MARKER = ".ferry-root"
STAGING = ".ferry-staging"
MASS_DELETE_SHARE = 0.25
MASS_DELETE_MIN = 100
MAX_ROUNDS = 50
CONFLICT_MARK = " (conflicted copy from "
TRANSFERS = (p.Upload, p.Download, p.Record)
PARALLEL_TRANSFERS = 16
SMALL_FILE = 1024 * 1024  # files up to this size are uploaded in batches
# Upload batches in flight at once. With all sixteen transfer slots, every batch's
# blocks went up together and the commits came in a bunch at the end, so other
# devices could start downloading only then; two at a time keep the server busy
# and commit a batch every tenth of a second or so from the start (sync.py's b:
# 5.4-5.9 s with sixteen, 4.2-4.7 s with two, on session 12's machine).
UPLOAD_BATCHES = 2
BATCH_FILES = 500
# server replies a live sync waits out with backoff instead of stopping: the server's database
# or block store is away, or it failed on this request (its log says why)
PASSING = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.INTERNAL})
BATCH_BYTES = 16 * 1024 * 1024
MAX_DIRTY = 10_000  # more changed paths than this since the last scan: a full scan is cheaper
# streaming sync: a file this big is announced before its upload, and a device told of one
# fetches its blocks from LAN peers meanwhile (at most PREFETCHES files at once, each kept
# PREFETCH_KEEP seconds for its commit, and only with PREFETCH_ROOM bytes to spare on the disk)
STREAM_OVER = 16 * 1024 * 1024
PREFETCHES = 2
PREFETCH_KEEP = 900.0
PREFETCH_ROOM = 1024 * 1024 * 1024
# an edit hint's copy is kept this many seconds for the commit (an edit that changed nothing never has one)
PRECOPY_KEEP = 300.0
HINT_TIMEOUT = 5.0  # seconds an edit hint may take to reach the server before it is not worth sending
FULL_SCAN_EVERY = 300.0  # s; live mode scans everything this often in case the watcher missed something


class SyncError(Exception):
    """Sync cannot go on (root missing, not logged in...); the message says why."""


def folder_id(root: Path) -> str:
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


class Engine:
    def __init__(self, root: Path, home: Path, creds: Credentials, *, confirm_deletes: bool = False,
                 retry_for: float = 60.0, lan: LanOptions | None = None, disk: fs.Disk | None = None,
                 clock: Clock | None = None, remote: Remote | None = None) -> None:  # fmt: skip
        """``disk``, ``clock`` and ``remote`` (the server connection) default to the real
        ones; the deterministic simulation (``tests/sim``) passes its own."""
        self.fs: fs.Disk = disk or fs.OsDisk()
        self.clock = clock or SystemClock()
        self.root = root.resolve() if isinstance(self.fs, fs.OsDisk) else root
        self.home = home
        self.device = creds.device
        self.confirm_deletes = confirm_deletes
        self.state = State(home / "folders" / folder_id(self.root) / "state.db")
        self.remote = remote or Remote(creds, retry_for, clock=self.clock)
        self.wakeup = asyncio.Event()
        self.remote.on_changed = self._pushed
        self.remote.on_closed = self.wakeup.set
        self.status: dict[str, Any] = {"path": str(self.root), "state": "starting", "pending": 0,
                                       "bytes_left": 0, "last_error": None, "conflicts": [], "skipped": {},
                                       "deletions_waiting": 0, "peers": []}  # fmt: skip
        self.errors: list[str] = []
        self.spaces: list[m.NamespaceInfo] = []  # the namespaces in the tree (client.mounts)
        self._over_quota: dict[str, float] = {}  # path -> until when its upload is not retried
        self._scan: Scan = Scan()
        # live mode: the watcher notes what changed, so a cycle re-checks only that
        self._dirty: set[str] = set()  # disk paths changed since the last scan
        self._watching = False  # the watcher is running: no change goes unreported
        self._full_needed = True  # the last scan cannot be brought up to date from _dirty
        self._full_at = 0.0  # clock.monotonic() of the last full scan
        self.case_insensitive = False  # probed by check_root
        # why this cycle found the disk full or read-only (client.diskspace), if it did
        self._disk_trouble: str | None = None
        self.lan = (
            LanNode(home, lan, creds.server_key, self._ask_tickets, self._locate)
            if lan and lan.enabled
            else None
        )
        # block -> (path, offset, size, the file as last scanned): what we serve
        self._index: dict[bytes, list[tuple[str, int, int, Seen]]] = {}
        self._index_stale = True
        self._index_at = 0.0  # clock.monotonic() of the last rebuild
        self._not_moved: set[str] = set()  # MoveLocal destinations this cycle could not rename to
        self._deleting: set[asyncio.Task[None]] = set()  # replaced big files being deleted (place())
        # streaming sync: content hash -> (where it is fetched from, the fetch from peers of a
        # file not committed yet, and the event that tells it the commit came: fetch() goes on)
        self._prefetches: dict[bytes, tuple[Scope, asyncio.Task[Prefetched], asyncio.Event]] = {}
        # edit hints: (namespace, content hash of the version being edited elsewhere) -> (its
        # path here, the copy of it being made into the staging folder for the new version)
        self._precopies: dict[tuple[int, bytes], tuple[str, asyncio.Task[Precopied]]] = {}
        self._hints: set[asyncio.Task[None]] = set()  # edit hints being sent
        # path -> the version an edit hint named, until a scan has read it
        self._hinted: dict[str, bytes] = {}

    # --- set-up ----------------------------------------------------------------------

    def check_root(self) -> None:
        """Refuse to sync a folder that was synced before but lost its marker
        (an unmounted disk or a replaced folder): that would delete everything."""
        enable_writer_checks()
        marker = self.root / MARKER
        if self.state.get("initialised") == "yes" and not self.fs.exists(marker):
            raise SyncError(
                f"{self.root} is missing or is not the folder synced before (no {MARKER} marker); "
                "if the disk is unmounted, mount it; nothing was changed"
            )
        try:
            self._prepare_root(marker)
        except OSError as e:
            raise SyncError(diskspace.trouble(e, self.root) or f"cannot prepare {self.root}: {e}") from None

    def _prepare_root(self, marker: Path) -> None:
        self.fs.mkdir(self.root, parents=True, exist_ok=True)
        if not self.fs.exists(marker):
            self.fs.write_bytes(marker, b"This folder is synced by Ferry. Do not delete this file.\n")
        self.fs.mkdir(self.root / STAGING, exist_ok=True)
        self.case_insensitive = names.probe_case_insensitive(self.root / STAGING)
        for leftover in self.fs.listdir(self.root / STAGING):  # temp files of an interrupted download
            with contextlib.suppress(OSError):
                self.fs.unlink(self.root / STAGING / leftover)
        if self.state.get("initialised") != "yes":
            # the marker durable before the state says this folder is synced: a marker lost to
            # a power cut after that would stop every later sync ("not the folder synced before")
            fd = self.fs.open(marker, os.O_RDONLY)
            try:
                self.fs.fsync(fd)
            finally:
                self.fs.close(fd)
            self.fs.fsync_dir(self.root)
            self.state.put("initialised", "yes")

    def conflict_name(self, path: str) -> str:
        return p.conflict_name(path, self.device, self.clock.now())

    def disk(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    # --- LAN peers ----------------------------------------------------------------------

    async def _start_lan(self) -> None:
        if self.lan is not None:
            try:
                await self.lan.start()
            except OSError as e:  # the sync goes on without peers
                log.warning("LAN sync off: cannot listen for peers: %s", e)
                self.lan.note = f"off: cannot listen for peers: {e.strerror or e}"
                self.lan = None

    async def _ask_tickets(self, fingerprint: bytes) -> m.LanTicketsReply:
        reply: m.LanTicketsReply = await self.remote.run(
            lambda conn: conn.call(lambda i: m.LanTickets(i, fingerprint), m.LanTicketsReply)
        )
        return reply

    def _locate(self, h: bytes) -> list[tuple[Path, int, int, int, Seen]]:
        """Where this device holds block ``h``, with each file's namespace."""
        if self._index_stale and self.clock.monotonic() - self._index_at > 1.0:
            self._rebuild_index()  # files placed since: serve them now, not after the next cycle
        out = []
        for path, offset, size, seen in self._index.get(h, ()):
            space = mounts.mount_of(path, self.spaces)
            if space is not None:
                out.append((self.disk(path), offset, size, space.ns, seen))
        return out

    def _ns_of(self, path: str) -> int:
        space = mounts.mount_of(path, self.spaces)
        return space.ns if space is not None else 0

    def _source(self, ns: int) -> Scope | None:
        """Where blocks of a file of namespace ``ns`` come from before the server."""
        return self.lan.scope(ns) if self.lan is not None else None

    def _rebuild_index(self) -> None:
        if self.lan is None or not self._index_stale:
            return
        index: dict[bytes, list[tuple[str, int, int, Seen]]] = {}
        for path, blocks, seen in self.state.held_files():
            _add_to_index(index, path, [(b.hash, b.size) for b in blocks], seen)
        self._index, self._index_stale, self._index_at = index, False, self.clock.monotonic()

    # --- one cycle ----------------------------------------------------------------

    async def pull(self) -> None:
        """Fold the server's journals since our cursors into the remote tree: the
        root namespace's, then (listed after it: see :mod:`client.mounts`) each
        shared folder's."""

        async def pull_all(conn: Any) -> None:
            listed = await conn.call(lambda i: m.ListNamespaces(i), m.NamespaceList)
            root = next(n for n in listed.namespaces if n.path == "/")
            await self._pull_namespace(conn, root, listed.namespaces)
            listed = await conn.call(lambda i: m.ListNamespaces(i), m.NamespaceList)
            if self._mount(listed.namespaces):
                # what the root journal put at a mount point while it was mounted was left out
                # (see client.mounts); now that path is the user's own again: read it all again
                self.state.put(mounts.ROOT_CURSOR, "0")
                await self._pull_namespace(conn, root, listed.namespaces)
            for info in listed.namespaces:
                if info.path != "/":
                    await self._pull_namespace(conn, info, listed.namespaces)
            self.spaces = listed.namespaces

        await self.remote.run(pull_all)

    async def _pull_namespace(self, conn: Any, info: m.NamespaceInfo, spaces: list[m.NamespaceInfo]) -> None:
        key = mounts.cursor_key(info)
        while True:
            since = int(self.state.get(key, "0") or 0)
            try:
                reply = await conn.call(lambda i, s=since: m.ListChanges(i, s, info.ns), m.Changes)
            except ProtocolError as e:
                if e.code == ErrorCode.BAD_REQUEST and "cursor" in e.message:
                    log.warning("server rejected our cursor (%s); full resync of the remote tree", e.message)
                    # the whole journal is re-read before any planning (the root's: every namespace's)
                    if info.path == "/":
                        self.state.reset_remote()
                    else:
                        self.state.reset_remote_under(info.path, key)
                    continue
                if e.code == ErrorCode.NOT_FOUND and info.path != "/":
                    return  # removed from the folder meanwhile: the next pull forgets it
                raise
            self.state.apply_changes(mounts.outward(reply.entries, info, spaces), reply.cursor, key)
            if not reply.has_more:
                return

    def _mount(self, spaces: list[m.NamespaceInfo]) -> bool:
        """Forget shared folders no longer visible (their files stay on disk, now
        plain files of the user's own tree); add the mount point of new ones.
        Whether a shared folder went away."""
        known: dict[str, str] = orjson.loads(self.state.get("mounts") or "{}")
        now = {str(n.ns): n.path for n in spaces if n.path != "/"}
        for ns, path in known.items():
            if now.get(ns) != path:
                log.info("%s is no longer shared with you; its files stay here as your own", path)
                self.state.forget(path)
                self.state.put(f"cursor:{ns}", "0")
        for info in spaces:
            if info.path != "/" and known.get(str(info.ns)) != info.path:
                key = mounts.cursor_key(info)
                # what the root journal had below this path is not there any more (the folder
                # was shared, or deleted before another was mounted here: its tombstones are
                # left out of the root's pull), and the shared folder's journal, read from
                # its start, says what is
                self.state.reset_remote_under(info.path, key)
                self.state.apply_changes([mounts.mount_point(info)], 0, key)
        if now != known:
            self.state.put("mounts", orjson.dumps(now).decode())
        return any(now.get(ns) != path for ns, path in known.items())

    def _hold_back(self, actions: list[p.Action]) -> list[p.Action]:
        """Leave out changes the server would refuse: in a folder shared with us
        read-only, or uploads that just went over the quota (retried a minute
        later). They are kept on disk and listed in the status. Leave out, too,
        downloads the disk has no room for (:mod:`client.diskspace`)."""
        held: dict[str, str] = {}
        not_down: dict[str, str] = {}
        kept: list[p.Action] = []
        now = self.clock.monotonic()
        room: int | None = None  # what downloads may still take on the disk (client.diskspace)
        for action in actions:
            refused = mounts.held_back(action, self.spaces)
            if refused is not None:
                held[refused[0]] = refused[1]
            elif isinstance(action, p.Upload) and self._over_quota.get(action.path, 0) > now:
                held[action.path] = "not uploaded: storage quota exceeded"
            elif isinstance(action, p.Download):
                size = self._size_of(action)
                room = diskspace.room(self.fs, self.root) if room is None else room
                if size > room:
                    not_down[action.path] = diskspace.held_back(size, room)
                else:
                    room -= size
                    kept.append(action)
            else:
                kept.append(action)
        self.status["not_uploaded"] = held
        self.status["not_downloaded"] = not_down
        if not_down:
            self._disk_trouble = diskspace.full(self.root, len(not_down))
        return kept

    def _plan(self, local: p.Tree, remote: p.Tree, synced: dict[str, p.Node]) -> list[p.Action]:
        """The plan, less local renames and deletes the server would refuse (of a shared
        folder's mount point, or inside a folder shared read-only). Planned as moves, what
        the planner puts after them counts on them being made (downloads went into the
        renamed copy, which the next round renamed again, and so on); held back, the
        device never again matched the server. Planned instead as if the original had
        never been synced: it comes back from the server, and a renamed copy is new here
        (uploaded where that is allowed)."""
        while True:
            actions = p.plan(local, remote, synced, self.conflict_name)
            refused = [a.src if isinstance(a, p.MoveRemote) else a.path for a in actions
                       if isinstance(a, p.MoveRemote | p.DeleteRemote) and mounts.held_back(a, self.spaces)]  # fmt: skip
            refused = [gone for gone in refused if gone in synced]  # not a move-aside of the server's
            if not refused:
                return actions
            for gone in refused:
                for path in [k for k in synced if is_within(k, gone)]:
                    del synced[path]

    def _refused(self, paths: list[str], e: ProtocolError) -> None:
        if e.code == ErrorCode.QUOTA_EXCEEDED:
            for path in paths:
                self._over_quota[path] = self.clock.monotonic() + 60
                self.status.setdefault("not_uploaded", {})[path] = f"not uploaded: {e.message}"

    async def cycle(self) -> list[p.Action]:
        """Pull, scan, plan, execute. Returns the actions attempted (empty: in sync)."""
        settled = self.clock.monotonic() + await self._settling_for()
        self._disk_trouble = None
        await self.pull()
        if self.lan is not None:
            self.lan.begin()  # after the first pull: the connection is up
        unresolved = await self._resolve_clashes() if self.case_insensitive else []
        known, remote, synced = self.state.observed(), self.state.remote_tree(), self.state.synced_tree()
        left = settled - self.clock.monotonic()  # what is left of it: reading the state took a while
        await asyncio.sleep(left)
        self._scan = await self._scan_disk(known)
        self._prune_precopies()
        self._settle_hints()
        for path, kept in unresolved:  # could not be renamed: not downloaded over `kept`
            self._scan.skipped[path] = (
                f"differs only in case from {kept}, which this filesystem cannot hold apart; rename one"
            )
        self._not_moved.clear()
        local = dict(self._scan.tree)
        for skipped in self._scan.skipped:  # neither deleted nor changed: left alone this round
            for tree in (local, remote, synced):
                for key in [k for k in tree if k == skipped or k.startswith(skipped.rstrip("/") + "/")]:
                    del tree[key]
        actions = self._plan(local, remote, synced)
        actions = self._implied_folders(self._hold_back(self._guard_mass_delete(actions, synced)))
        self._touched(actions)
        self._index_stale = self._index_stale or bool(actions)
        self.status.update(state="syncing" if actions else "up to date", pending=len(actions))
        self.status["bytes_left"] = sum(self._size_of(a) for a in actions)
        self._write_status()
        # transfers of different paths are independent: run several at once;
        # everything else keeps the planner's order
        i = 0
        while i < len(actions):
            if isinstance(actions[i], TRANSFERS):
                j = i
                while j < len(actions) and isinstance(actions[j], TRANSFERS):
                    j += 1
                slots = asyncio.Semaphore(PARALLEL_TRANSFERS)

                async def bounded(action: p.Action, slots: asyncio.Semaphore = slots) -> None:
                    async with slots:
                        await self._attempt(action)

                singles, batches = self._batch_small(actions[i:j])

                commits = asyncio.Semaphore(UPLOAD_BATCHES)

                async def bounded_batch(
                    batch: list[p.Upload] | list[p.Download],
                    slots: asyncio.Semaphore = slots,
                    commits: asyncio.Semaphore = commits,
                ) -> None:
                    gate = commits if isinstance(batch[0], p.Upload) else contextlib.nullcontext()
                    async with slots, gate:
                        await self._attempt_batch(batch)

                try:
                    async with asyncio.TaskGroup() as group:
                        for batch in batches:
                            group.create_task(bounded_batch(batch))
                        for action in singles:
                            group.create_task(bounded(action))
                except BaseExceptionGroup as failed:  # a dropped connection: the caller reconnects
                    raise failed.exceptions[0] from None
                i = j
            else:
                await self._attempt(actions[i])
                i += 1
        return actions

    def _implied_folders(self, actions: list[p.Action]) -> list[p.Action]:
        """Leave out creating a folder on the server when a file uploaded in this cycle
        lies inside it, in the same namespace: the server creates a committed file's
        missing folders in the file's own commit, and the next pull brings them. (A
        folder with a hundred subfolders of files moved in took a hundred commits
        one after another before the first file went up.) An upload that fails
        leaves its folder to the next cycle's plan."""
        uploads = [a.path for a in actions if isinstance(a, p.Upload)]
        if not uploads:
            return actions
        implied: set[tuple[int, str]] = set()
        for path in uploads:
            ns = self._ns_of(path)
            implied.update((ns, folder) for folder in ancestors(path))
        return [a for a in actions
                if not (isinstance(a, p.MkdirRemote) and (self._ns_of(a.path), a.path) in implied)]  # fmt: skip

    async def _resolve_clashes(self) -> list[tuple[str, str]]:
        """Rename on the server the paths this disk cannot hold apart (client.names);
        the clashes left (renames refused), as :func:`names.clashes` gives them."""
        remote = self.state.remote_tree()
        found = names.clashes(remote)
        taken = {names.fold(k) for k in remote} if found else set()
        for path, kept in found:
            entry = self.state.remote_entry(path)
            if entry is None:
                continue
            # a name free on the server: another clash of this path resolved in the same
            # second took the first one (and a name taken makes the rename fail every time)
            new, n = self.conflict_name(path), 1
            while names.fold(new) in taken:
                n += 1
                new = p.with_suffix(self.conflict_name(path), f" {n}")
            taken.add(names.fold(new))
            move = functools.partial(_move_to, path, new, entry.version)
            try:
                done = await self._change(move)
            except ProtocolError as e:  # changed meanwhile, or not ours to rename: reported by cycle()
                log.warning("%s differs only in case from %s; could not rename it: %s", path, kept, e.message)
                continue
            log.warning(
                "%s differs only in case from %s: renamed it to %s (both kept)", path, kept, done.entry.path
            )
            self.status["conflicts"] = sorted({*self.status["conflicts"], done.entry.path})
        if not found:
            return []
        await self.pull()
        return names.clashes(self.state.remote_tree())

    def _incremental(self) -> bool:
        return (
            self._watching
            and not self._full_needed
            and self.clock.monotonic() - self._full_at < FULL_SCAN_EVERY
        )

    async def _settling_for(self) -> float:
        """Live mode: how long until the files just changed have settled (at most
        ``SETTLE_S``). Scanned sooner, a file saved a moment ago would be skipped
        as still being written, which costs a whole extra cycle."""
        if not self._incremental() or not self._dirty:
            return 0.0
        return await self.fs.run(_settling_for, self._dirty.copy(), self.clock.time())

    async def _scan_disk(self, known: dict[str, Observed]) -> Scan:
        """A full scan unless the watcher reported every change since the last
        one: then only the changed folders (and files still settling) are looked at."""
        dirty, self._dirty = self._dirty, set()
        loop = asyncio.get_running_loop()

        def changing(path: str, seen: Observed) -> None:  # in the scan's thread
            loop.call_soon_threadsafe(self._hint_edit, path, seen)

        if self._incremental():
            try:
                return await self.fs.run(
                    rescan,
                    self.root,
                    self._scan,
                    dirty,
                    known,
                    self.conflict_name,
                    self.clock.time(),
                    changing,
                )
            except BaseException:
                self._full_needed = True  # the dirty paths are spent
                raise
        self._full_needed = False
        self._full_at = self.clock.monotonic()
        return await self.fs.run(scan, self.root, known, self.conflict_name, self.clock.time(), changing)

    def _touched(self, actions: list[p.Action]) -> None:
        """Paths these actions change on disk are looked at by the next scan even
        if the watcher reports them late (or never: a folder made on the way)."""
        for action in actions:
            match action:
                case p.Download(path=path) | p.MkdirLocal(path=path) | p.DeleteLocal(path=path):
                    self._dirty.add(str(self.disk(path)))
                case p.MoveLocal(src=a, dst=b) | p.ConflictCopy(path=a, new_path=b):
                    self._dirty.update((str(self.disk(a)), str(self.disk(b))))

    def _batch_small(
        self, actions: list[p.Action]
    ) -> tuple[list[p.Action], list[list[p.Upload] | list[p.Download]]]:
        """Small files go up, and come down, in batches: one block query and one
        commit per batch up; one flush to disk per batch down."""
        singles: list[p.Action] = []
        ups: list[list[p.Upload]] = [[]]
        downs: list[list[p.Download]] = [[]]
        filled = {id(ups): 0, id(downs): 0}  # bytes in the last batch of each

        def add(batches: list[list[Any]], action: p.Action, size: int) -> None:
            if len(batches[-1]) >= BATCH_FILES or filled[id(batches)] + size > BATCH_BYTES:
                batches.append([])
                filled[id(batches)] = 0
            batches[-1].append(action)
            filled[id(batches)] += size

        for action in actions:
            if isinstance(action, p.Upload):
                obs = self._scan.observed.get(action.path)
                if obs is not None and obs.size <= SMALL_FILE:
                    add(ups, action, obs.size)
                    continue
            elif isinstance(action, p.Download):
                entry = self.state.remote_entry(action.path)
                if entry is not None and entry.kind == "file" and entry.size <= SMALL_FILE:
                    add(downs, action, entry.size)
                    continue
            singles.append(action)
        batches: list[list[p.Upload] | list[p.Download]] = [b for b in ups if b]
        batches += [b for b in downs if b]
        return singles, batches

    async def _attempt_batch(self, batch: list[p.Upload] | list[p.Download]) -> None:
        groups: list[list[p.Upload] | list[p.Download]] = [batch]
        if isinstance(batch[0], p.Upload):  # a commit batch stays in one namespace
            ups: list[p.Upload] = batch
            groups = [[ups[i] for i in group]
                      for group in mounts.group_by_namespace([a.path for a in ups], self.spaces).values()]  # fmt: skip
        for group in groups:
            try:
                if isinstance(group[0], p.Upload):
                    await self._upload_batch(group)
                else:
                    await self._download_batch(group)
            except ConnectionLost:
                raise
            except (ProtocolError, OSError) as e:
                if isinstance(e, ProtocolError):
                    self._refused([a.path for a in group], e)
                message = e.message if isinstance(e, ProtocolError) else self._os_error(e)
                log.warning("%s of %d files: %s", type(group[0]).__name__.lower(), len(group), message)
                self.status["last_error"] = message
        self.status["pending"] -= len(batch)

    async def _upload_batch(self, batch: list[p.Upload]) -> None:
        def read_all() -> list[tuple[p.Upload, os.stat_result, list[tuple[bytes, bytes]]]]:
            out = []
            for action in batch:
                disk = self.disk(action.path)
                kept = self._scan.data.pop(action.path, None)  # (read and cut by the scan)
                try:
                    before = self.fs.stat(disk)
                    if kept is not None and kept[0] == (before.st_size, before.st_mtime_ns, before.st_ino):
                        if self._as_scanned(action.path, before):  # unchanged since the scan read it
                            out.append((action, before, kept[1]))
                        continue
                    data = self.fs.read_bytes(disk)
                    after = self.fs.stat(disk)
                except OSError as e:
                    log.info("%s: %s; will retry", action.path, e.strerror)
                    continue
                if (before.st_size, before.st_mtime_ns, before.st_ino) != (
                    after.st_size,
                    after.st_mtime_ns,
                    after.st_ino,
                ) or len(data) != after.st_size:
                    continue  # changing while read: the next cycle takes it
                if not self._as_scanned(action.path, after):
                    continue  # rewritten since the scan (maybe half-written yet): the next cycle looks again
                out.append((action, after, [(b.hash, bytes(b.data)) for b in chunk_bytes(data)]))
            return out

        items = await self.fs.run(read_all)
        if not items:
            return
        data_of = {h: d for _, _, blocks in items for h, d in blocks}
        files = [
            m.FileCommit(a.path, a.parent, st_.st_size, st_.st_mtime_ns, [h for h, _ in blocks],
                         bool(st_.st_mode & st.S_IXUSR))
            for a, st_, blocks in items
        ]  # fmt: skip
        key = f"sync-{uuid.uuid4()}"

        async def send_and_commit(conn: Any) -> m.CommittedBatch:
            reply = await conn.call(lambda i: m.QueryBlocks(i, list(data_of)), m.BlocksMissing)
            await asyncio.gather(*(conn.put_block(h, data_of[h]) for h in reply.missing))
            return await conn.call(lambda i: m.CommitBatch(i, key, files), m.CommittedBatch)  # type: ignore[no-any-return]

        done = await self.remote.run(send_and_commit)
        failpoints.hit("client.upload.committed")
        records = []
        for (action, st_, blocks), result in zip(items, done.results, strict=True):
            if result.entry is None:
                assert result.failure is not None
                log.info("%s: %s; re-planning", action.path, result.failure.message)
                if result.failure.code != ErrorCode.CONFLICT:
                    self.status["last_error"] = result.failure.message
                continue
            digest = content_hash(h for h, _ in blocks)
            records.append((action.path, result.entry, Observed(st_.st_size, st_.st_mtime_ns, st_.st_ino, digest,
                                                                bool(st_.st_mode & st.S_IXUSR))))  # fmt: skip
        self.state.record_many(records)  # one transaction for the batch

    async def _download_batch(self, batch: list[p.Download]) -> None:
        """Small downloads as a group: fetch every block, write each file into the
        staging folder, make them all durable with one flush, rename each into
        place if the local file is still the one the scan saw, flush the renames,
        and only then record them (the state is never ahead of the disk)."""
        todo: list[tuple[str, m.Entry]] = []
        same: list[tuple[str, m.Entry, Observed | None]] = []
        for action in batch:
            entry = self.state.remote_entry(action.path)
            if entry is None or entry.kind != "file" or entry.blocks is None:
                continue
            seen = self._scan.observed.get(action.path)
            if seen and seen.content_hash == entry.content_hash and seen.executable == entry.executable:
                same.append((action.path, entry, seen))  # same bytes already here: no transfer
            else:
                todo.append((action.path, entry))
        if same:
            self.state.record_many(same)
        if not todo:
            return
        for path, entry in todo:
            if content_hash(b.hash for b in entry.blocks or []) != entry.content_hash:
                raise ProtocolError(
                    ErrorCode.BAD_ENTRY, f"{path}: the server's block list does not match its hash"
                )
        wanted = list(dict.fromkeys(b.hash for _, e in todo for b in e.blocks or []))
        got: dict[bytes, bytes] = {}

        # Small files come from the server, not LAN peers: hundreds of requests at once
        # share one permission check there, while a peer costs a round trip per block
        async def fetch_all(conn: Any) -> None:
            async def one(h: bytes) -> None:
                data = bytes(await conn.get_block(h))
                if block_hash(data) != h:
                    raise ProtocolError(ErrorCode.BAD_BLOCK, f"block {h.hex()[:12]} arrived corrupted")
                got[h] = data
                failpoints.hit("client.download.block")

            await asyncio.gather(*(one(h) for h in wanted if h not in got))

        await self.remote.run(fetch_all)
        staging = self.root / STAGING
        staged = await self.fs.run(_stage_files, staging, [(e, b"".join(got[b.hash] for b in e.blocks or []))
                                                                 for _, e in todo])  # fmt: skip
        got.clear()
        failpoints.hit("client.download.staged")
        placed = await self.fs.run(self._place, todo, staged)
        if not placed:
            return
        records = []
        for path, entry, now in placed:
            assert entry.content_hash is not None
            records.append((path, entry, Observed(now.st_size, now.st_mtime_ns, now.st_ino, entry.content_hash,
                                                  entry.executable)))  # fmt: skip
        self.state.record_many(records)
        self._index_stale = True

    def _place(
        self, todo: list[tuple[str, m.Entry]], staged: list[Path]
    ) -> list[tuple[str, m.Entry, os.stat_result]]:
        """(In a worker thread.) Rename each staged file into place if the local file
        is still the one the scan saw, make the renames durable, and say what each
        placed file now is on disk; staged files not placed are deleted."""
        placed: list[tuple[str, m.Entry, Path]] = []
        moved: set[Path] = set()
        folders: set[Path] = set()  # made (or found) for an earlier file of the batch
        try:
            for (path, entry), tmp in zip(todo, staged, strict=True):
                if not self._unchanged(path):
                    # edited (or created) locally meanwhile: leave it; the next cycle sees both edits
                    log.info("%s changed locally during download; re-planning", path)
                    continue
                dest = self.disk(path)
                if dest.parent not in folders:
                    self.fs.mkdir(dest.parent, parents=True, exist_ok=True)
                    folders.add(dest.parent)
                self.fs.replace(tmp, dest)
                moved.add(tmp)
                placed.append((path, entry, dest))
                failpoints.hit("client.download.placed")
        finally:
            for tmp in staged:
                if tmp not in moved:
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.unlink(tmp)
        if not placed:
            return []
        _flush_names(self.root, {dest.parent for _, _, dest in placed})
        return [(path, entry, self.fs.stat(dest)) for path, entry, dest in placed]

    async def _attempt(self, action: p.Action) -> None:
        """Run one action; a failure is reported and left to the next cycle."""
        try:
            await self.execute(action)
        except ConnectionLost:
            raise
        except (ProtocolError, OSError) as e:
            if isinstance(e, ProtocolError) and isinstance(action, p.Upload):
                self._refused([action.path], e)
            message = e.message if isinstance(e, ProtocolError) else self._os_error(e)
            log.warning("%s: %s", type(action).__name__, message)
            self.status["last_error"] = message
        self.status["pending"] -= 1
        self.status["bytes_left"] = max(0, self.status["bytes_left"] - self._size_of(action))

    def _os_error(self, e: OSError) -> str:
        trouble = diskspace.trouble(e, self.root)
        if trouble is not None:
            self._disk_trouble = trouble  # retrying at once would fail the same way: stop
            return trouble
        return f"{e.strerror}: {e.filename}"

    def _size_of(self, action: p.Action) -> int:
        if isinstance(action, p.Upload):
            obs = self._scan.observed.get(action.path)
            return obs.size if obs else 0
        if isinstance(action, p.Download):
            entry = self.state.remote_entry(action.path)
            return entry.size if entry else 0
        return 0

    def _guard_mass_delete(self, actions: list[p.Action], synced: p.Tree) -> list[p.Action]:
        deletes = {a.path for a in actions if isinstance(a, p.DeleteRemote)}
        if not deletes:  # the usual cycle: no need to look at every file
            self.status["deletions_waiting"] = 0
            return actions
        files = [k for k, n in synced.items() if n.kind == "file"]
        doomed = {k for k in files if k in deletes or any(a in deletes for a in ancestors(k))}
        if len(doomed) >= MASS_DELETE_MIN and len(doomed) > MASS_DELETE_SHARE * len(files):
            if not self.confirm_deletes:
                self.status["deletions_waiting"] = len(doomed)
                log.warning("%d of %d files were deleted locally; not deleting them on the server until "
                            "`ferry sync --confirm-deletes`", len(doomed), len(files))  # fmt: skip
                return [a for a in actions if not isinstance(a, p.DeleteRemote)]
        self.status["deletions_waiting"] = 0
        return actions

    # --- actions -------------------------------------------------------------------

    async def execute(self, action: p.Action) -> None:
        match action:
            case p.Upload(path=path, parent=parent):
                await self._upload(path, parent)
            case p.MkdirRemote(path=path):
                done = await self._change(lambda i, k: m.Mkdir(i, k, path))
                self.state.record(path, done.entry, None)
            case p.DeleteRemote(path=path, parent=parent):
                try:
                    newest = self._newest_within(path)
                    await self._change(lambda i, k: m.Delete(i, k, path, parent, newest=newest))
                except ProtocolError as e:
                    if e.code != ErrorCode.NOT_FOUND:
                        raise
                self.state.forget(path)
            case p.MoveRemote(src=src, dst=dst, parent=parent):
                done = await self._change(lambda i, k: m.Move(i, k, src, dst, parent))
                if dst in self._scan.tree:  # a local rename: the disk has it at dst already
                    self.state.moved(src, dst)
                    self.state.record(dst, done.entry, self._scan.observed.get(dst))
                else:  # a move-aside on the server: not here until the Download that follows
                    self.state.apply_changes([done.entry], int(self.state.get("cursor", "0") or 0))
            case p.Download(path=path):
                await self._download(path)
            case p.MkdirLocal(path=path):
                self.fs.mkdir(self.disk(path), parents=True, exist_ok=True)
                self._record_remote(path)
            case p.DeleteLocal(path=path):
                self._delete_local(path)
            case p.MoveLocal(src=src, dst=dst):
                moved = False
                try:
                    moved = self._move_local(src, dst)
                finally:
                    if not moved:  # refused, or failed (a case-insensitive disk: x.txt -> X.txt/x.txt)
                        self._not_moved.add(dst)
            case p.ConflictCopy(path=path, new_path=new_path):
                self._conflict_copy(path, new_path)
            case p.Record(path=path):
                if any(is_within(path, dst) for dst in self._not_moved):
                    return  # the plan counted on a local move that could not be made: re-planned next cycle
                if self.state.remote_entry(path) is None:
                    # gone on both sides (deleted here, moved or deleted there): not in the merge base any more
                    self.state.forget(path, remote=False)
                else:
                    self._record_remote(path)

    def _newest_within(self, path: str) -> int | None:
        """The newest version at or below ``path`` in the remote tree this plan was made
        from: a folder's delete must not take with it a file put in it since (its
        version is newer), which this device never saw and so never meant to delete."""
        entry = self.state.remote_entry(path)
        if entry is None or entry.kind != "dir":
            return None  # a file: its parent version says it all
        below = path + "/"
        versions = [n.version for k, n in self.state.remote_tree().items()
                    if (k == path or k.startswith(below)) and n.version is not None]  # fmt: skip
        return max(versions, default=None)

    async def _change(self, make: Callable[[int, str], m.Message]) -> m.Committed:
        key = f"sync-{uuid.uuid4()}"  # one key for every retry of this change: applied once
        return await self.remote.run(lambda conn: conn.call(lambda i: make(i, key), m.Committed))

    def _unchanged(self, path: str) -> bool:
        """Is the file at ``path`` still exactly what the scan saw (or still absent)?"""
        try:
            now = self.fs.lstat(self.disk(path))
        except FileNotFoundError:
            return path not in self._scan.observed and path not in self._scan.tree
        return self._as_scanned(path, now)

    def _as_scanned(self, path: str, now: os.stat_result) -> bool:
        """Is ``now`` the stat of the very file the scan saw (and found settled) at ``path``?"""
        seen = self._scan.observed.get(path)
        return seen is not None and (now.st_size, now.st_mtime_ns, now.st_ino) == (
            seen.size,
            seen.mtime_ns,
            seen.inode,
        )

    async def _upload(self, path: str, parent: int | None) -> None:
        src = self.disk(path)
        known = self._scan.blocks.get(path)
        offered = await self._announce(path, src, known)
        try:
            await self._send_and_commit(path, src, known, parent)
            if offered is not None and known is not None:
                # peers fetching it now, as soon as the commit reaches them, find it here
                # still: served from the file as committed until the index is rebuilt
                _add_to_index(
                    self._index, path, list(zip(known.hashes, known.sizes, strict=True)), known.stat
                )
        finally:
            if offered is not None:
                offered.released(src)

    async def _announce(self, path: str, src: Path, known: KnownBlocks | None) -> Scope | None:
        """Streaming sync: offer a big file's blocks to LAN peers and tell the
        server it is coming, so that the namespace's other devices here can
        fetch it from us while we upload it (see :meth:`_pushed`)."""
        if self.lan is None or known is None or sum(known.sizes) < STREAM_OVER or not self.lan.has_peers():
            return None
        ns = self._ns_of(path)
        blocks = [m.BlockRef(h, n) for h, n in zip(known.hashes, known.sizes, strict=True)]
        scope = self.lan.scope(ns)
        scope.offer(src, blocks, known.stat)
        try:
            await self.remote.run(lambda conn: conn.call(lambda i: m.Upcoming(i, ns, blocks), m.Ok))
        except ProtocolError as e:  # an older server, or a folder shared read-only: just upload
            log.debug("%s: not announced (%s)", path, e.message)
        return scope

    def _hint_edit(self, path: str, seen: Observed) -> None:
        """The scan is about to read a big file changed since it was last synced:
        tell the server at once (no retry: only a hint), so that the namespace's
        other devices can start copying the version they hold into the staging
        file of the new one while we read and upload it (see :meth:`_precopy`)."""
        node = self.state.synced_node(path)
        if node is None or node.content_hash != seen.content_hash or seen.content_hash is None:
            return
        if self._send_hint(path, [], seen.content_hash):
            self._hinted[path] = seen.content_hash

    async def _hints_sent(self) -> None:
        """Before stopping: let the hints just made go out (a second at most)."""
        if self._hints:
            await asyncio.wait(self._hints, timeout=1.0)

    def _settle_hints(self) -> None:
        """After a scan: a file an edit hint was sent for and that the scan has now
        read whole turned out unchanged (touched, or edited back): say so, with its
        blocks, so that the devices copying it drop their copies at once."""
        for path, base in list(self._hinted.items()):
            if path in self._scan.unstable:
                continue  # read again next round (a hint may come again; the copies stay good)
            del self._hinted[path]
            seen, known = self._scan.observed.get(path), self._scan.blocks.get(path)
            if seen is not None and seen.content_hash == base and known is not None:
                self._send_hint(
                    path, [m.BlockRef(h, n) for h, n in zip(known.hashes, known.sizes, strict=True)], base
                )

    def _send_hint(self, path: str, blocks: list[m.BlockRef], base: bytes) -> bool:
        """Send ``upcoming`` for ``path`` now if connected (no retry: only a hint)."""
        conn = self.remote.conn
        if conn is None:
            return False
        hint = functools.partial(m.Upcoming, ns=self._ns_of(path), blocks=blocks, base=base)

        async def send() -> None:
            with contextlib.suppress(Exception):  # offline, a viewer, an older server: no hint
                await asyncio.wait_for(conn.call(hint, m.Ok), HINT_TIMEOUT)

        task = asyncio.create_task(send())
        self._hints.add(task)
        task.add_done_callback(self._hints.discard)
        return True

    def _pushed(self, msg: m.Changed | m.NamespacesChanged | m.Incoming) -> None:
        if isinstance(msg, m.Incoming):
            if msg.blocks and msg.base is not None and content_hash(b.hash for b in msg.blocks) == msg.base:
                if (msg.ns, msg.base) in self._precopies:  # the edit hinted at changed nothing
                    self._drop_precopy((msg.ns, msg.base), self._precopies[(msg.ns, msg.base)][1])
            elif msg.blocks:
                self._prefetch(msg)
            elif msg.base is not None:
                self._precopy(msg.ns, msg.base)
        else:
            self.wakeup.set()

    def _precopy(self, ns: int, base: bytes) -> None:
        """Another device is editing a big file whose version ``base`` we hold:
        copy it into a staging file now, so that when the new version's commit
        comes only its changed blocks are left to write (:meth:`_download`)."""
        if (ns, base) in self._precopies or len(self._precopies) >= PREFETCHES:
            return
        path = next(
            (
                p
                for p, seen in self._scan.observed.items()
                if seen.content_hash == base and seen.size >= HINT_OVER and self._ns_of(p) == ns
            ),
            None,
        )
        if path is None:
            return
        seen = self._scan.observed[path]
        try:
            if self.fs.disk_usage(self.root)[1] < seen.size + PREFETCH_ROOM or not self._unchanged(path):
                return
        except OSError:
            return

        async def copy() -> Precopied:
            local = await self._local_copy(path)
            if local is None:
                raise ValueError("not the synced version")
            return await precopy(local, self.root / STAGING)

        task = asyncio.create_task(copy())
        self._precopies[(ns, base)] = (path, task)
        asyncio.get_running_loop().call_later(PRECOPY_KEEP, self._drop_precopy, (ns, base), task)

    def _prune_precopies(self) -> None:
        """Drop copies of versions no longer here (edited or deleted locally meanwhile:
        the commit, when it comes, is a conflict or a re-creation, not built from them)."""
        for (ns, base), (path, task) in list(self._precopies.items()):
            seen = self._scan.observed.get(path)
            if seen is None or seen.content_hash != base:
                self._drop_precopy((ns, base), task)

    def _take_precopy(self, path: str) -> asyncio.Task[Precopied] | None:
        """The copy :meth:`_precopy` is making of the file at ``path`` as synced, if any."""
        seen = self._scan.observed.get(path)
        key = (self._ns_of(path), seen.content_hash) if seen is not None and seen.content_hash else None
        if key is None or key not in self._precopies or self._precopies[key][0] != path:
            return None
        return self._precopies.pop(key)[1]

    def _drop_precopy(self, key: tuple[int, bytes], task: asyncio.Task[Precopied]) -> None:
        """No commit of an edit came (or we stop): delete the copy."""
        if key not in self._precopies or self._precopies[key][1] is not task:
            return
        del self._precopies[key]
        self._discard_staged(task)

    def _discard_staged(
        self, task: asyncio.Task[Prefetched] | asyncio.Task[Precopied], scope: Scope | None = None
    ) -> None:
        """Stop a prefetch or a copy made for an edit hint and delete its temp file
        (a task still running deletes its own when cancelled)."""
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            tmp = task.result().tmp
            if scope is not None:
                scope.released(tmp)
            with contextlib.suppress(OSError):
                self.fs.unlink(tmp)

    def _drop_prefetches(self) -> None:
        for key, (_, task, _) in list(self._prefetches.items()):
            self._drop_prefetch(key, task)
        for pkey, (_, ptask) in list(self._precopies.items()):
            self._drop_precopy(pkey, ptask)
        for hint in self._hints:
            hint.cancel()

    def _prefetch(self, msg: m.Incoming) -> None:
        """Another device is uploading a big file: fetch from LAN peers the
        blocks we lack, so that when its commit comes only the rest is left
        (:meth:`_download` finishes the same temp file)."""
        size = sum(b.size for b in msg.blocks)
        if self.lan is None or size < STREAM_OVER or len(self._prefetches) >= PREFETCHES:
            return
        key = content_hash(b.hash for b in msg.blocks)
        if (
            key in self._prefetches
            or not any(s.ns == msg.ns for s in self.spaces)
            or not self.lan.has_peers()
        ):
            return
        try:
            if self.fs.disk_usage(self.root)[1] < size + PREFETCH_ROOM:
                return
        except OSError:
            return
        self._rebuild_index()  # what we hold already (an older version, say) is copied, not fetched
        if all(b.hash in self._index for b in msg.blocks):
            return
        scope, stop = self.lan.scope(msg.ns), asyncio.Event()
        task = asyncio.create_task(
            prefetch(msg.blocks, self.root / STAGING, scope, lambda h: h in self._index, stop)
        )
        self._prefetches[key] = (scope, task, stop)
        asyncio.get_running_loop().call_later(PREFETCH_KEEP, self._drop_prefetch, key, task)

    def _drop_prefetch(self, key: bytes, task: asyncio.Task[Prefetched]) -> None:
        """No commit of a prefetched file came (or we stop): delete what we fetched."""
        if key not in self._prefetches or self._prefetches[key][1] is not task:
            return
        scope, _, _ = self._prefetches.pop(key)
        self._discard_staged(task, scope)

    async def _send_and_commit(
        self, path: str, src: Path, known: KnownBlocks | None, parent: int | None
    ) -> None:
        plan, stat = await send_file(self.remote, src, lambda n: None, known=known)
        if not self._as_scanned(path, stat):
            # rewritten since the scan (maybe half-written yet: the scan's settle check is
            # what keeps those out): never commit it unseen; the next cycle looks again
            log.info("%s changed since the scan; re-planning", path)
            return
        digest = content_hash(plan.hashes)
        key = f"sync-{uuid.uuid4()}"
        done = await self.remote.run(lambda conn: commit_blocks(conn, src, path, plan, stat, parent, key))
        failpoints.hit("client.upload.committed")
        executable = bool(stat.st_mode & st.S_IXUSR)
        self.state.record(
            path, done.entry, Observed(stat.st_size, stat.st_mtime_ns, stat.st_ino, digest, executable)
        )

    async def _download(self, path: str) -> None:
        entry = self.state.remote_entry(path)
        if entry is None or entry.kind != "file":
            return
        seen = self._scan.observed.get(path)
        if seen and seen.content_hash == entry.content_hash and seen.executable == entry.executable:
            self.state.record(path, entry, seen)  # same bytes already here (e.g. after a move): no transfer
            if (copying := self._take_precopy(path)) is not None:
                self._discard_staged(copying)  # (a copy made for an edit that changed no byte)
            return
        dest = self.disk(path)
        self.fs.mkdir(dest.parent, parents=True, exist_ok=True)
        local = resume = also = None
        copying = self._take_precopy(path)
        if copying is not None:  # another device's edit hint: our version is (being) copied already
            try:
                copied = await copying
                resume, local = copied.resume(entry.blocks or []), copied.local
            except Exception as e:  # copy what is left as usual
                log.info("%s: copy before the commit failed (%s)", path, e)
                self._discard_staged(copying)
        if local is None and len(entry.blocks or []) > 1:
            local = await self._local_copy(path)
        if entry.content_hash in self._prefetches:  # streaming sync: its blocks came (are coming) early
            _, task, stop = self._prefetches.pop(entry.content_hash)
            stop.set()  # the blocks being fetched arrive; the rest come as any fetch's do
            try:
                also = await task
            except Exception as e:  # fetch it all as usual
                log.info("%s: prefetch failed (%s)", path, e)
        if resume is None:
            resume, also = also, None
        tmp = await fetch(
            self.remote,
            entry,
            self.root / STAGING,
            lambda n: None,
            local=local,
            source=self._source(self._ns_of(path)),
            resume=resume,
            also=also,
        )
        failpoints.hit("client.download.staged")
        try:
            if not self._unchanged(path):
                # edited (or created) locally while we fetched: leave it; the next cycle sees both edits
                log.info("%s changed locally during download; re-planning", path)
                return
            aside = self.root / STAGING / f"{STAGING_PREFIX}old-{uuid.uuid4().hex[:16]}"
            old = await self.fs.run(place, tmp, dest, aside)
            failpoints.hit("client.download.placed")
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.unlink(tmp)
        if old is not None:
            self._delete_later(old)
        now = self.fs.stat(dest)
        assert entry.content_hash is not None
        self.state.record(path, entry, Observed(now.st_size, now.st_mtime_ns, now.st_ino, entry.content_hash,
                                                entry.executable))  # fmt: skip
        self._index_stale = True

    def _delete_later(self, old: Path) -> None:
        """Delete a replaced file's blocks kept aside by :func:`place`, in the background."""

        async def delete() -> None:
            with contextlib.suppress(OSError):  # left for the staging clean-up at the next start
                await self.fs.run(self.fs.unlink, old)

        task = asyncio.create_task(delete())
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _deleted(self) -> None:
        """Wait for the deletions :meth:`_delete_later` started (before the engine stops)."""
        await asyncio.gather(*self._deleting, return_exceptions=True)

    async def _local_copy(self, path: str) -> LocalCopy | None:
        """The local file at ``path`` as a source of blocks for its new version,
        if it is still the synced version (whose block list the server has)."""
        seen, base = self._scan.observed.get(path), self.state.synced_node(path)
        if seen is None or base is None or base.kind != "file" or base.content_hash != seen.content_hash:
            return None
        assert base.version is not None
        try:
            reply = await self.remote.run(
                lambda conn: conn.call(lambda i: m.GetVersion(i, path, base.version), m.VersionReply)
            )
        except ProtocolError:
            return None  # pruned, or the path now names another file: fetch it all
        old = reply.info.entry
        if old.content_hash != seen.content_hash or not old.blocks:
            return None
        return LocalCopy(self.disk(path), old.blocks)

    def _record_remote(self, path: str) -> None:
        entry = self.state.remote_entry(path)
        if entry is not None:
            self.state.record(path, entry, self._scan.observed.get(path))

    def _delete_local(self, path: str) -> None:
        target = self.disk(path)
        if fs.is_dir(target):
            for name in self.fs.listdir(target):  # editor and OS junk does not keep a deleted folder alive
                if name in (".DS_Store", "Thumbs.db") and fs.is_file(target / name):
                    self.fs.unlink(target / name)
            try:
                self.fs.rmdir(target)
            except OSError:
                return  # something new inside: the next cycle uploads it
        elif self._unchanged(path):
            with contextlib.suppress(FileNotFoundError):
                self.fs.unlink(target)
        else:
            return  # edited since the scan: keep it; the next cycle uploads it
        # not the remote entry: the server may hold something new here (a file replaced by a folder)
        self.state.forget(path, remote=False)

    def _move_local(self, src: str, dst: str) -> bool:
        """Rename ``src`` to ``dst`` on disk, unless ``dst`` is taken (on a case-insensitive
        disk, by a name that differs only in case and is moved aside later in the plan)
        or ``src`` is gone. Whether it was renamed."""
        source, target = self.disk(src), self.disk(dst)
        case_only = names.fold(src) == names.fold(dst) and names.same_file(source, target)
        if (self.fs.exists(target) and not case_only) or not self.fs.exists(source):
            return False
        if self.case_insensitive and any(names.fold(a) == names.fold(src) for a in ancestors(dst)):
            # the way to dst runs through src itself (x.txt -> X.txt/x.txt): step aside first
            # (a crash meanwhile leaves it under an ignored name; the next cycle downloads it again)
            aside = source.with_name(f"{INTERNAL_PREFIX}move-{uuid.uuid4().hex[:12]}")
            self.fs.rename(source, aside)
            try:
                self.fs.mkdir(target.parent, parents=True, exist_ok=True)
                self.fs.rename(aside, target)
            except OSError:
                self.fs.rename(aside, source)  # back where it was, in sight of the next scan
                raise
        else:
            self.fs.mkdir(target.parent, parents=True, exist_ok=True)
            self.fs.rename(source, target)
        # the merge base moves with it; not the server's entry at dst, which may be newer
        # (moved and edited there): the Download or Record planned for dst settles that
        self.state.moved(src, dst)
        return True

    def _conflict_copy(self, path: str, new_path: str) -> None:
        source, target = self.disk(path), self.disk(new_path)
        if self.fs.exists(target):
            stem, dot, ext = new_path.rpartition(".")
            new_path = (
                f"{stem} {random.randrange(10**6)}.{ext}" if dot else f"{new_path} {random.randrange(10**6)}"
            )
            target = self.disk(new_path)
        self.fs.rename(source, target)
        self.state.unobserve(path)
        # the path is free now: the download that follows may land there this round
        self._scan.tree.pop(path, None)
        self._scan.observed.pop(path, None)
        self.status["conflicts"] = sorted({*self.status["conflicts"], new_path})
        log.warning("conflict: kept your version of %s as %s", path, new_path)

    # --- status ----------------------------------------------------------------------

    def _write_status(self) -> None:
        self.status["skipped"] = dict(sorted(self._scan.skipped.items()))
        self.status["conflicts"] = sorted(
            {
                *self.status["conflicts"],
                *(k for k in self._scan.tree if CONFLICT_MARK in k and CONFLICT_MARK in k.rsplit("/", 1)[-1]),
            }
        )
        if self.lan is not None:
            self.status["lan"] = self.lan.status()
            self.status["peers"] = [p["address"] for p in self.status["lan"]["peers"]]
        self.status["updated"] = self.clock.now().astimezone().isoformat(timespec="seconds")
        write_status(self.home, str(self.root), self.status)

    # --- loops ---------------------------------------------------------------------------

    async def run_once(self) -> bool:
        """Cycle until nothing is left to do (waiting out files still being written)."""
        with fs.use(self.fs):
            return await self._run_once()

    async def _run_once(self) -> bool:
        try:
            self.check_root()
            await self._start_lan()
            for _ in range(MAX_ROUNDS):
                actions = await self.cycle()
                if self._disk_trouble is not None:  # the disk cannot take what is left
                    self.status.update(state="paused", last_error=self._disk_trouble)
                    return False
                if not actions and not self._scan.unstable:
                    # a fixed point: an error of an earlier cycle (a commit that lost a race,
                    # a file that changed meanwhile) was re-planned and is settled
                    self.status.update(state="up to date", pending=0, bytes_left=0, last_error=None)
                    return True
                if not actions:
                    await asyncio.sleep(SETTLE_S)
            self.status["last_error"] = f"still changing after {MAX_ROUNDS} rounds"
            return False
        except SyncError as e:
            self.status.update(state="stopped", last_error=str(e))
            raise
        finally:
            self._write_status()
            await self._deleted()
            await self._hints_sent()
            self._drop_prefetches()
            if self.lan is not None:
                await self.lan.stop()
            await self.remote.close()

    async def run_forever(self) -> None:
        """Live sync: cycle on local changes (watcher), server pushes, and every 30 s."""
        with fs.use(self.fs):
            await self._run_forever()

    async def _run_forever(self) -> None:
        self.check_root()
        await self._start_lan()
        watcher = asyncio.create_task(self._watch())
        await asyncio.sleep(0)  # the watcher is set up before the first scan starts
        delays = backoff_delays(cap=30.0)
        try:
            while True:
                self.wakeup.clear()
                try:
                    actions = await self.cycle()
                    delays = backoff_delays(cap=30.0)
                    busy = bool(actions or self._scan.unstable) and self._disk_trouble is None
                    timeout = SETTLE_S if busy else 30.0
                except (ConnectionLost, ProtocolError) as e:
                    if isinstance(e, ProtocolError) and e.code not in PASSING:
                        raise
                    # the server, or its database or block store, is away (or failed this once):
                    # wait, never give up; the status shows why
                    self.status.update(state="offline", last_error=getattr(e, "message", str(e)))
                    self._write_status()
                    timeout = next(delays)
                self._write_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout)
        finally:
            watcher.cancel()
            self.status["state"] = "stopped"
            self._write_status()
            await self._deleted()
            await self._hints_sent()
            self._drop_prefetches()
            if self.lan is not None:
                await self.lan.stop()
            await self.remote.close()

    async def _watch(self) -> None:
        from watchfiles import awatch

        def interesting(_change: object, path: str) -> bool:
            # (called for every event: string operations, not a Path per event)
            return not os.path.basename(path).startswith(INTERNAL_PREFIX) and f"/{STAGING}/" not in path

        self._watching = self._full_needed = True  # what changed before now is not in _dirty
        try:
            async for changes in awatch(self.root, watch_filter=interesting, debounce=50, step=20,
                                        recursive=True):  # fmt: skip
                self._dirty.update(path for _change, path in changes)
                if len(self._dirty) > MAX_DIRTY:
                    self._dirty.clear()
                    self._full_needed = True
                self.wakeup.set()
        except Exception as e:  # e.g. out of inotify watches
            log.warning("file watcher stopped (%s); scanning the whole folder on each cycle", e)
        finally:
            self._watching = False


def _move_to(src: str, dst: str, parent: int, request_id: int, key: str) -> m.Move:
    return m.Move(request_id, key, src, dst, parent)


def _settling_for(paths: set[str], now: float) -> float:
    """How long until the last of these files has settled (at most ``SETTLE_S``)."""
    left = 0.0
    for path in paths:
        with contextlib.suppress(OSError):
            info = fs.disk().lstat(path)
            if st.S_ISREG(info.st_mode):
                left = max(left, settle_left(path, info.st_mtime_ns, now))
    return min(left, SETTLE_S)


def status_path(home: Path) -> Path:
    return home / "status.json"


def write_status(home: Path, folder: str, status: dict[str, Any]) -> None:
    path = status_path(home)
    try:
        everything = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        everything = {}
    everything.setdefault("folders", {})[folder] = status
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_bytes(orjson.dumps(everything, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)
    except OSError as e:  # a full or read-only disk: the status is a report, the sync goes on
        log.warning("cannot write the status file %s: %s", path, e.strerror)
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_status(home: Path) -> dict[str, Any]:
    try:
        return orjson.loads(status_path(home).read_bytes())  # type: ignore[no-any-return]
    except (OSError, orjson.JSONDecodeError):
        return {"folders": {}}


@contextlib.contextmanager
def _state_errors(home: Path) -> Iterator[None]:
    """The local state cannot be read or written (its disk full or read-only,
    most often): one clear line instead of SQLite's traceback."""
    try:
        yield
    except sqlite3.Error as e:
        raise SyncError(
            f"cannot use the local sync state under {home} ({e}); is its disk full or read-only? "
            "the next sync picks up where this one stopped"
        ) from None


async def sync_once(
    root: Path, home: Path, creds: Credentials, confirm_deletes: bool, retry_for: float,
    lan: LanOptions | None = None,
) -> bool:  # fmt: skip
    with _state_errors(home):
        engine = Engine(root, home, creds, confirm_deletes=confirm_deletes, retry_for=retry_for, lan=lan)
        try:
            return await engine.run_once()
        finally:
            engine.state.close()


async def sync_forever(
    root: Path, home: Path, creds: Credentials, confirm_deletes: bool, lan: LanOptions | None = None
) -> None:
    with _state_errors(home):
        engine = Engine(root, home, creds, confirm_deletes=confirm_deletes, retry_for=10.0, lan=lan)
        try:
            await engine.run_forever()
        finally:
            engine.state.close()


def _add_to_index(
    index: dict[bytes, list[tuple[str, int, int, Seen]]],
    path: str,
    blocks: list[tuple[bytes, int]],
    seen: Seen,
) -> None:
    """Name in ``index`` where each block (hash, size) of the file at ``path`` is."""
    offset = 0
    for h, size in blocks:
        index.setdefault(h, []).append((path, offset, size, seen))
        offset += size


def _stage_files(staging: Path, files: list[tuple[m.Entry, bytes]]) -> list[Path]:
    """Write each file's bytes to a new temp file in ``staging`` (mode and mtime
    set), durable when this returns."""
    disk = fs.disk()
    disk.mkdir(staging, exist_ok=True)
    out: list[Path] = []
    try:
        for entry, data in files:
            tmp = staging / f"{STAGING_PREFIX}{uuid.uuid4().hex[:16]}"
            # created with its final mode (the umask applied, as the kernel also does): a
            # small file is written at once, so there is no window worth a chmod per file
            mode = (0o755 if entry.executable else 0o644) & ~UMASK
            fd = disk.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            out.append(tmp)
            try:
                view = memoryview(data)
                while view:
                    view = view[disk.write(fd, view) :]
                if not durable.GROUPED:
                    disk.fsync(fd)
            finally:
                disk.close(fd)
            if entry.mtime_ns:
                disk.utime(tmp, (entry.mtime_ns, entry.mtime_ns))
        disk.flush(staging)
    except BaseException:
        for tmp in out:
            with contextlib.suppress(FileNotFoundError):
                disk.unlink(tmp)
        raise
    return out


def _flush_names(root: Path, folders: set[Path]) -> None:
    """Make renames into these folders durable."""
    if not fs.disk().flush(root):
        for folder in folders:
            fs.disk().fsync_dir(folder)
