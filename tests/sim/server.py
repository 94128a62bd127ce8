"""An in-memory Ferry server for the simulation: the protocol's semantics for
one user's root namespace, without PostgreSQL.

Real here: every request and reply crosses the real codec (``protocol.framing``
encodes and decodes, with its validation), paths are checked with
``protocol.paths.validate_path`` as ``server.ws`` does, and a file commit is
judged by the real server's pure rule ``server.metastore._check_file`` (stale
parent, missing blocks, size against blocks, nothing-changed). Modelled here
after ``server.metastore``: versions, heads, the journal and its cursors,
idempotent changes by request key, mkdir, move (with its subtree), delete
(with its subtree), batch commits, block storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from protocol import framing
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import block_hash
from protocol.paths import ancestors, is_within, validate_path
from server.metastore import _check_file

NS = 1


def _conflict(path: str, head: m.Entry | None, why: str) -> ProtocolError:
    detail = {"current": framing.to_wire(head)} if head is not None else None
    return ProtocolError(ErrorCode.CONFLICT, f"{path}: {why}", detail)


class SimServer:
    def __init__(self) -> None:
        self.heads: dict[str, m.Entry] = {}
        self.journal: list[m.Entry] = []  # seq i + 1 is journal[i]
        self.history: list[m.Entry] = []  # every version ever written
        self.blocks: dict[bytes, bytes] = {}
        self.requests: dict[str, tuple[int, object]] = {}  # idempotency key -> (seq, result)
        self._ids = 0
        self.on_change: Callable[[int], None] = lambda seq: None
        self.now_ns: Callable[[], int] = lambda: 0

    # --- the wire ---------------------------------------------------------------------

    def handle_text(self, frame: str, device: str) -> str:
        """One request frame in, one reply frame out."""
        try:
            msg = framing.decode(frame)
            reply = self._dispatch(msg, device)
        except ProtocolError as e:
            req_id = (e.detail or {}).get("id") if e.detail else None
            try:
                req_id = getattr(framing.decode(frame), "id", req_id)
            except ProtocolError:
                pass
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

    def _dispatch(self, msg: m.Message, device: str) -> m.Message:
        match msg:
            case m.Ping(id=i):
                return m.Pong(i)
            case m.ListNamespaces(id=i):
                return m.NamespaceList(i, self.namespaces())
            case m.ListChanges(id=i, since=since, limit=limit):
                return self._changes(i, since, limit)
            case m.QueryBlocks(id=i, hashes=hashes):
                return m.BlocksMissing(i, [h for h in dict.fromkeys(hashes) if h not in self.blocks])
            case m.Stat(id=i, path=p):
                head = self.heads.get(validate_path(p))
                if head is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, f"{p}: no such file or folder")
                return m.EntryReply(i, head)
            case m.GetVersion(id=i):
                raise ProtocolError(ErrorCode.NOT_FOUND, "versions are not kept by the simulated server")
            case m.Commit(id=i, key=key):
                seq, entry = self._once(key, lambda: self._commit(msg, device))
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
            case m.CommitBatch(id=i, key=key, files=files):
                seq, results = self._once(key, lambda: self._batch(files, device))
                return m.CommittedBatch(i, seq, results)  # type: ignore[arg-type]
            case m.Mkdir(id=i, key=key, path=p):
                seq, entry = self._once(key, lambda: self._mkdir(validate_path(p), device))
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
            case m.Move(id=i, key=key, src=src, dst=dst, parent=parent):
                seq, entry = self._once(
                    key, lambda: self._move(validate_path(src), validate_path(dst), parent, device)
                )
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
            case m.Delete(id=i, key=key, path=p, parent=parent, newest=newest):
                seq, entry = self._once(key, lambda: self._delete(validate_path(p), parent, newest, device))
                return m.Committed(i, seq, entry)  # type: ignore[arg-type]
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"the simulated server does not serve {msg.TYPE}")

    # --- reads --------------------------------------------------------------------------

    def namespaces(self) -> list[m.NamespaceInfo]:
        return [m.NamespaceInfo(NS, "/", "owner", len(self.journal))]

    def _changes(self, i: int, since: int, limit: int) -> m.Changes:
        head = len(self.journal)
        if since < 0 or since > head:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"cursor {since} is not valid for namespace {NS} (head is {head}); resync"
            )
        limit = max(1, min(limit, 5000))
        entries = self.journal[since : since + limit]
        cursor = since + len(entries)
        return m.Changes(i, NS, entries, cursor, cursor < head)

    # --- changes --------------------------------------------------------------------------

    def _once(self, key: str, change: Callable[[], object]) -> tuple[int, object]:
        """Apply ``change`` once per key: a retry gets the first result (the journal
        moves only when the change succeeds, like the real server's transaction)."""
        if not key or len(key) > 200:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "a change needs an idempotency key of 1-200 characters")
        if key in self.requests:
            return self.requests[key]
        before = (dict(self.heads), len(self.journal), len(self.history))
        try:
            result = change()
        except ProtocolError:
            self.heads, n_journal, n_history = before
            del self.journal[n_journal:]
            del self.history[n_history:]
            raise
        done = (len(self.journal), result)
        self.requests[key] = done
        self.on_change(len(self.journal))
        return done

    def _write(self, old: m.Entry | None, device: str, **fields: object) -> m.Entry:
        self._ids += 1
        base = old or m.Entry(path="", kind="dir", file_id=self._ids, version=self._ids)
        entry = replace(base, version=self._ids, device=device, committed_ns=self.now_ns(), **fields)  # type: ignore[arg-type]
        if entry.deleted or (old is not None and old.path != entry.path):
            self.heads.pop(old.path if old is not None else entry.path, None)
        if not entry.deleted:
            self.heads[entry.path] = entry
        else:
            self.heads.pop(entry.path, None)
        self.journal.append(entry)
        self.history.append(entry)
        return entry

    def _ensure_folders(self, path: str, device: str) -> None:
        for folder in ancestors(path):
            head = self.heads.get(folder)
            if head is None:
                self._write(None, device, path=folder, kind="dir")
            elif head.kind != "dir":
                raise ProtocolError(ErrorCode.NOT_A_DIRECTORY, f"{folder} is a file, not a folder")

    def _sizes_of(self, blocks: list[bytes]) -> dict[bytes, int]:
        return {h: len(self.blocks[h]) for h in blocks if h in self.blocks}

    def _file(self, f: m.Commit | m.FileCommit, device: str) -> m.Entry:
        path = validate_path(f.path)
        head = self.heads.get(path)
        checked = _check_file(path, f.parent, f.size, f.mtime_ns, f.executable, f.blocks, head,
                              self._sizes_of(f.blocks))  # fmt: skip
        if isinstance(checked, m.Entry):
            return checked
        digest, sizes = checked
        self._ensure_folders(path, device)
        refs = [m.BlockRef(h, s) for h, s in zip(f.blocks, sizes, strict=True)]
        return self._write(head, device, path=path, kind="file", size=f.size, mtime_ns=f.mtime_ns,
                           executable=f.executable, content_hash=digest, blocks=refs, deleted=False)  # fmt: skip

    def _commit(self, c: m.Commit, device: str) -> m.Entry:
        return self._file(c, device)

    def _batch(self, files: list[m.FileCommit], device: str) -> list[m.BatchResult]:
        out = []
        for f in files:  # each file stands or falls on its own
            before = (dict(self.heads), len(self.journal), len(self.history))
            try:
                out.append(m.BatchResult(entry=self._file(f, device)))
            except ProtocolError as e:
                self.heads, n_journal, n_history = before
                del self.journal[n_journal:]
                del self.history[n_history:]
                out.append(m.BatchResult(failure=m.Failure(e.code.value, e.message, e.detail)))
        return out

    def _mkdir(self, path: str, device: str) -> m.Entry:
        if path == "/":
            raise ProtocolError(ErrorCode.EXISTS, "the root folder always exists")
        head = self.heads.get(path)
        if head is not None:
            if head.kind != "dir":
                raise ProtocolError(ErrorCode.EXISTS, f"{path}: a file is already there")
            return head
        self._ensure_folders(path, device)
        return self._write(None, device, path=path, kind="dir")

    def _subtree(self, folder: str) -> list[m.Entry]:
        return [self.heads[p] for p in sorted(self.heads) if p != folder and is_within(p, folder)]

    def _delete(self, path: str, parent: int | None, newest: int | None, device: str) -> m.Entry:
        if path == "/":
            raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be deleted")
        head = self.heads.get(path)
        if head is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder")
        if parent is not None and head.version != parent:
            raise _conflict(path, head, "changed on the server since your version")
        children = self._subtree(path)
        if newest is not None and any(c.version > newest for c in children):
            raise _conflict(path, head, "something in it changed on the server since you looked")
        for child in reversed(children):
            self._write(child, device, deleted=True)
        return self._write(head, device, deleted=True)

    def _move(self, src: str, dst: str, parent: int | None, device: str) -> m.Entry:
        if "/" in (src, dst):
            raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be moved or replaced")
        if src != dst and is_within(dst, src):
            raise ProtocolError(ErrorCode.BAD_PATH, f"cannot move {src} into itself ({dst})")
        head = self.heads.get(src)
        if head is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{src}: no such file or folder")
        if parent is not None and head.version != parent:
            raise _conflict(src, head, "changed on the server since your version")
        if src == dst:
            return head
        target = self.heads.get(dst)
        if target is not None and target.file_id != head.file_id:
            raise ProtocolError(ErrorCode.EXISTS, f"{dst}: something is already there")
        self._ensure_folders(dst, device)
        children = self._subtree(src)
        moved = self._write(head, device, path=dst)
        for child in children:
            self._write(child, device, path=dst + child.path[len(src) :])
        return moved
