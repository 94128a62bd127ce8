"""An in-memory Ferry server for the simulation: the protocol's semantics for
one user's root namespace and a folder another user shares with them,
without PostgreSQL.

Real here: every request and reply crosses the real codec (``protocol.framing``
encodes and decodes, with its validation), paths are checked with
``protocol.paths.validate_path`` as ``server.ws`` does, and a file commit is
judged by the real server's pure rule ``server.metastore._check_file`` (stale
parent, missing blocks, size against blocks, nothing-changed). Modelled here
after ``server.metastore``: versions, heads, the journal and its cursors,
idempotent changes by request key, mkdir, move (with its subtree), delete
(with its subtree), batch commits, block storage, and the shared folder: the
user's memberships, requests without a namespace routed by path to the
namespace they live in (with the real ``server.mounts.Mounts.find`` and
``server.mounts.outward``), read-only viewers, moves across namespaces (a
copy with a new history and a delete, as ``MetaStore.move_across``), and the
owner's own edits made straight on the server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from protocol import framing
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import block_hash
from protocol.paths import ancestors, is_within, validate_path
from server.metastore import _check_file
from server.mounts import Mounts, outward

ROOT_NS = 1  # the user's own tree
SHARED_NS = 2  # a folder another user (the owner) shares with them
OWNER = "owner"  # the sharing user's device, as the versions name it


def _conflict(path: str, head: m.Entry | None, why: str) -> ProtocolError:
    detail = {"current": framing.to_wire(head)} if head is not None else None
    return ProtocolError(ErrorCode.CONFLICT, f"{path}: {why}", detail)


class Space:
    """One namespace: heads, journal and every version ever written."""

    def __init__(self, ns: int, server: SimServer) -> None:
        self.ns = ns
        self.server = server
        self.heads: dict[str, m.Entry] = {}
        self.journal: list[m.Entry] = []  # seq i + 1 is journal[i]
        self.history: list[m.Entry] = []

    def saved(self) -> tuple[dict[str, m.Entry], int, int]:
        return dict(self.heads), len(self.journal), len(self.history)

    def restore(self, saved: tuple[dict[str, m.Entry], int, int]) -> None:
        self.heads, n_journal, n_history = saved
        del self.journal[n_journal:]
        del self.history[n_history:]

    def changes(self, i: int, since: int, limit: int) -> m.Changes:
        head = len(self.journal)
        if since < 0 or since > head:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"cursor {since} is not valid for namespace {self.ns} (head is {head}); resync",
            )
        limit = max(1, min(limit, 5000))
        entries = self.journal[since : since + limit]
        cursor = since + len(entries)
        return m.Changes(i, self.ns, entries, cursor, cursor < head)

    def write(self, old: m.Entry | None, device: str, **fields: Any) -> m.Entry:
        version = self.server.next_id()
        base = old or m.Entry(path="", kind="dir", file_id=version, version=version)
        entry = replace(base, version=version, device=device, committed_ns=self.server.now_ns(), **fields)
        if entry.deleted or (old is not None and old.path != entry.path):
            self.heads.pop(old.path if old is not None else entry.path, None)
        if entry.deleted:
            self.heads.pop(entry.path, None)
        else:
            self.heads[entry.path] = entry
        self.journal.append(entry)
        self.history.append(entry)
        return entry

    def ensure_folders(self, path: str, device: str) -> None:
        for folder in ancestors(path):
            head = self.heads.get(folder)
            if head is None:
                self.write(None, device, path=folder, kind="dir")
            elif head.kind != "dir":
                raise ProtocolError(ErrorCode.NOT_A_DIRECTORY, f"{folder} is a file, not a folder")

    def file(self, f: m.Commit | m.FileCommit, device: str) -> m.Entry:
        path = validate_path(f.path)
        head = self.heads.get(path)
        sizes_of = {h: len(self.server.blocks[h]) for h in f.blocks if h in self.server.blocks}
        checked = _check_file(path, f.parent, f.size, f.mtime_ns, f.executable, f.blocks, head, sizes_of)
        if isinstance(checked, m.Entry):
            return checked
        digest, sizes = checked
        self.ensure_folders(path, device)
        refs = [m.BlockRef(h, s) for h, s in zip(f.blocks, sizes, strict=True)]
        return self.write(head, device, path=path, kind="file", size=f.size, mtime_ns=f.mtime_ns,
                          executable=f.executable, content_hash=digest, blocks=refs, deleted=False)  # fmt: skip

    def batch(self, files: list[m.FileCommit], device: str) -> list[m.BatchResult]:
        out = []
        for f in files:  # each file stands or falls on its own
            saved = self.saved()
            try:
                out.append(m.BatchResult(entry=self.file(f, device)))
            except ProtocolError as e:
                self.restore(saved)
                out.append(m.BatchResult(failure=m.Failure(e.code.value, e.message, e.detail)))
        return out

    def mkdir(self, path: str, device: str) -> m.Entry:
        if path == "/":
            raise ProtocolError(ErrorCode.EXISTS, "the root folder always exists")
        head = self.heads.get(path)
        if head is not None:
            if head.kind != "dir":
                raise ProtocolError(ErrorCode.EXISTS, f"{path}: a file is already there")
            return head
        self.ensure_folders(path, device)
        return self.write(None, device, path=path, kind="dir")

    def subtree(self, folder: str) -> list[m.Entry]:
        return [self.heads[p] for p in sorted(self.heads) if p != folder and is_within(p, folder)]

    def head_at(self, path: str, parent: int | None) -> m.Entry:
        head = self.heads.get(path)
        if head is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder")
        if parent is not None and head.version != parent:
            raise _conflict(path, head, "changed on the server since your version")
        return head

    def delete(self, path: str, parent: int | None, newest: int | None, device: str) -> m.Entry:
        if path == "/":
            raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be deleted")
        head = self.head_at(path, parent)
        children = self.subtree(path)
        if newest is not None and any(c.version > newest for c in children):
            raise _conflict(path, head, "something in it changed on the server since you looked")
        for child in reversed(children):
            self.write(child, device, deleted=True)
        return self.write(head, device, deleted=True)

    def move(self, src: str, dst: str, parent: int | None, device: str) -> m.Entry:
        if "/" in (src, dst):
            raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be moved or replaced")
        if src != dst and is_within(dst, src):
            raise ProtocolError(ErrorCode.BAD_PATH, f"cannot move {src} into itself ({dst})")
        head = self.head_at(src, parent)
        if src == dst:
            return head
        target = self.heads.get(dst)
        if target is not None and target.file_id != head.file_id:
            raise ProtocolError(ErrorCode.EXISTS, f"{dst}: something is already there")
        self.ensure_folders(dst, device)
        children = self.subtree(src)
        moved = self.write(head, device, path=dst)
        for child in children:
            self.write(child, device, path=dst + child.path[len(src) :])
        return moved


class SimServer:
    def __init__(self) -> None:
        self.spaces = {ROOT_NS: Space(ROOT_NS, self), SHARED_NS: Space(SHARED_NS, self)}
        self.blocks: dict[bytes, bytes] = {}
        self.requests: dict[str, tuple[int, object, int]] = {}  # idempotency key -> (seq, result, ns)
        self.mount: str | None = None  # where the shared folder is in the user's tree (None: not shared)
        self.role = "editor"
        self._ids = 0
        self._keys = 0
        self.on_change: Callable[[int, int], None] = lambda ns, seq: None
        self.on_namespaces: Callable[[], None] = lambda: None
        self.now_ns: Callable[[], int] = lambda: 0

    def next_id(self) -> int:
        self._ids += 1  # version and file ids only grow, across namespaces, as the real sequence
        return self._ids

    # --- what the user sees ----------------------------------------------------------

    @property
    def root(self) -> Space:
        return self.spaces[ROOT_NS]

    def namespaces(self) -> list[m.NamespaceInfo]:
        out = [m.NamespaceInfo(ROOT_NS, "/", "owner", len(self.root.journal))]
        if self.mount is not None:
            out.append(m.NamespaceInfo(SHARED_NS, self.mount, self.role, len(self.spaces[SHARED_NS].journal)))  # type: ignore[arg-type]
        return out

    def tree(self) -> dict[str, m.Entry]:
        """The user's whole tree: their root with the shared folder mounted."""
        out = dict(self.root.heads)
        if self.mount is not None:
            out[self.mount] = m.Entry(self.mount, "dir", -SHARED_NS, -SHARED_NS)
            out.update({self.mount + p: e for p, e in self.spaces[SHARED_NS].heads.items()})
        return out

    def _mounts(self) -> Mounts:
        return Mounts([(SHARED_NS, self.mount)] if self.mount is not None else [], ROOT_NS)

    # --- share changes (the owner's doing) ------------------------------------------

    def share(self, role: str) -> None:
        n = 1
        while (mount := "/Team" + (f" {n}" if n > 1 else "")) in self.root.heads:
            n += 1  # accepted under another name, as `ferry accept --as` would
        self.mount, self.role = mount, role
        self.on_namespaces()

    def unshare(self) -> None:
        self.mount = None
        self.on_namespaces()

    def set_role(self, role: str) -> None:
        self.role = role
        self.on_namespaces()

    def owner_change(self, change: Callable[[Space], object]) -> None:
        """The owner edits the shared folder from a device the simulation does not run."""
        self._keys += 1
        self._once(f"owner-{self._keys}", SHARED_NS, lambda: change(self.spaces[SHARED_NS]))

    # --- the wire ---------------------------------------------------------------------

    def handle_text(self, frame: str, device: str) -> str:
        """One request frame in, one reply frame out."""
        req_id = None
        try:
            msg = framing.decode(frame)
            req_id = getattr(msg, "id", None)
            reply = self._dispatch(msg, device)
        except ProtocolError as e:
            return framing.encode(framing.error_for(req_id, e))
        return framing.encode(reply)

    def put_block(self, h: bytes, data: bytes) -> None:
        if block_hash(data) != h:
            raise ProtocolError(ErrorCode.BAD_BLOCK, "block bytes do not match their hash")
        self.blocks[h] = bytes(data)

    def get_block(self, h: bytes) -> bytes:
        if h not in self.blocks:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no block {h.hex()[:12]}")
        return self.blocks[h]

    def _visible(self, ns: int | None) -> Space:
        ns = ROOT_NS if ns is None else ns
        if ns == ROOT_NS or (ns == SHARED_NS and self.mount is not None):
            return self.spaces[ns]
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no namespace {ns} visible to you")

    def _writable(self, ns: int) -> Space:
        space = self._visible(ns)
        if ns == SHARED_NS and self.role == "viewer":
            raise ProtocolError(ErrorCode.READ_ONLY, "you may only read this shared folder")
        return space

    def _dispatch(self, msg: m.Message, device: str) -> m.Message:
        match msg:
            case m.Ping(id=i):
                return m.Pong(i)
            case m.ListNamespaces(id=i):
                return m.NamespaceList(i, self.namespaces())
            case m.ListChanges(id=i, since=since, limit=limit, ns=ns):
                return self._visible(ns).changes(i, since, limit)
            case m.QueryBlocks(id=i, hashes=hashes):
                return m.BlocksMissing(i, [h for h in dict.fromkeys(hashes) if h not in self.blocks])
            case m.GetVersion():
                raise ProtocolError(ErrorCode.NOT_FOUND, "versions are not kept by the simulated server")
            case m.Move(ns=None, src=src, dst=dst) if self._across(validate_path(src), validate_path(dst)):
                return self._move_across(msg, device)
        if getattr(msg, "ns", 0) is None and self.mount is not None:
            routed, mount = self._route(msg)
            return outward(self._run(routed, device), mount, routed, self._mounts())  # type: ignore[return-value]
        return self._run(msg, device)

    def _across(self, src: str, dst: str) -> bool:
        mounts = self._mounts()
        return mounts.find(src)[0] != mounts.find(dst)[0]

    def _route(self, msg: Any) -> tuple[Any, str]:
        """As ``server.mounts.route``: the request in the namespace its path lives in."""
        mounts = self._mounts()
        if isinstance(msg, m.Move):
            ns, src, mount = mounts.find(validate_path(msg.src))
            return dataclasses.replace(msg, ns=ns, src=src, dst=mounts.find(validate_path(msg.dst))[1]), mount
        if isinstance(msg, m.CommitBatch):
            found = {mounts.find(validate_path(f.path))[::2] for f in msg.files}
            if len(found) > 1:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, "a commit batch must stay inside one shared folder"
                )
            ((ns, mount),) = found
            files = [dataclasses.replace(f, path=mounts.find(f.path)[1]) for f in msg.files]
            return dataclasses.replace(msg, ns=ns, files=files), mount
        if isinstance(msg, m.Stat | m.Commit | m.Mkdir | m.Delete):
            ns, inner, mount = mounts.find(validate_path(msg.path))
            return dataclasses.replace(msg, ns=ns, path=inner), mount
        return msg, "/"

    def _run(self, msg: m.Message, device: str) -> m.Message:
        match msg:
            case m.Stat(id=i, path=p, ns=ns):
                head = self._visible(ns).heads.get(validate_path(p))
                if head is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, f"{p}: no such file or folder")
                return m.EntryReply(i, head)
            case m.Commit(id=i, key=key, ns=ns):
                space = self._writable(ns or ROOT_NS)
                seq, entry = self._once(key, space.ns, lambda: space.file(msg, device))
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
            case m.CommitBatch(id=i, key=key, files=files, ns=ns):
                space = self._writable(ns or ROOT_NS)
                seq, results = self._once(key, space.ns, lambda: space.batch(files, device))
                return m.CommittedBatch(i, seq, results)  # type: ignore[arg-type]
            case m.Mkdir(id=i, key=key, path=p, ns=ns):
                space = self._writable(ns or ROOT_NS)
                seq, entry = self._once(key, space.ns, lambda: space.mkdir(validate_path(p), device))
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
            case m.Move(id=i, key=key, src=src, dst=dst, parent=parent, ns=ns):
                space = self._writable(ns or ROOT_NS)
                seq, entry = self._once(
                    key, space.ns, lambda: space.move(validate_path(src), validate_path(dst), parent, device)
                )
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
            case m.Delete(id=i, key=key, path=p, parent=parent, ns=ns, newest=newest):
                space = self._writable(ns or ROOT_NS)
                seq, entry = self._once(
                    key, space.ns, lambda: space.delete(validate_path(p), parent, newest, device)
                )
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"the simulated server does not serve {msg.TYPE}")

    def _move_across(self, msg: m.Move, device: str) -> m.Committed:
        """As ``MetaStore.move_across``: new files at ``dst`` (their history starts
        there), the source deleted (its history stays where it was)."""
        mounts = self._mounts()
        src_ns, src, _ = mounts.find(msg.src)
        dst_ns, dst, dst_mount = mounts.find(msg.dst)
        if src == "/" or dst == "/":
            raise ProtocolError(
                ErrorCode.BAD_PATH, "a shared folder's mount point cannot be moved or replaced"
            )
        source, target = self._writable(src_ns or ROOT_NS), self._writable(dst_ns or ROOT_NS)

        def change() -> m.Entry:
            head = source.head_at(src, msg.parent)
            if dst in target.heads:
                raise ProtocolError(ErrorCode.EXISTS, f"{dst}: something is already there")
            target.ensure_folders(dst, device)
            children = source.subtree(src)
            fields = ("kind", "size", "mtime_ns", "executable", "content_hash", "blocks")
            copied = target.write(None, device, path=dst, **{f: getattr(head, f) for f in fields})
            for child in children:
                target.write(
                    None, device, path=dst + child.path[len(src) :], **{f: getattr(child, f) for f in fields}
                )
            for child in reversed(children):
                source.write(child, device, deleted=True)
            source.write(head, device, deleted=True)
            return copied

        seq, entry = self._once(msg.key, target.ns, change)
        out = entry if dst_mount == "/" else replace(entry, path=dst_mount + entry.path)  # type: ignore[arg-type]
        return m.Committed(msg.id, seq, out)

    # --- changes --------------------------------------------------------------------------

    def _once(self, key: str, ns: int, change: Callable[[], object]) -> tuple[int, object]:
        """Apply ``change`` once per key: a retry gets the first result (the journal
        moves only when the change succeeds, like the real server's transaction)."""
        if not key or len(key) > 200:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "a change needs an idempotency key of 1-200 characters"
            )
        if key in self.requests:
            seq, result, _ = self.requests[key]
            return seq, result
        saved = {n: space.saved() for n, space in self.spaces.items()}
        try:
            result = change()
        except ProtocolError:
            for n, space in self.spaces.items():
                space.restore(saved[n])
            raise
        seq = len(self.spaces[ns].journal)
        self.requests[key] = (seq, result, ns)
        for n, space in self.spaces.items():
            if len(space.journal) != saved[n][1]:
                self.on_change(n, len(space.journal))
        return seq, result
