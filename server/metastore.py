"""Metadata in PostgreSQL: users, devices, namespaces, versions, journal, heads.

Theory of operation for changes (commit, mkdir, move, delete): each runs in
one transaction that first locks its namespace row (``FOR UPDATE``), which
serialises changes per namespace and makes ``seq`` gap-free. It then checks
the parent version (optimistic concurrency: a stale parent is a ``conflict``
carrying the current entry, never an overwrite), writes immutable version
rows, one journal row per changed path, moves the heads, records the result
under the request's idempotency key, and ``NOTIFY``s — so a notice exists
only for committed data, and a retried request returns the first result.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import orjson

from protocol import failpoints, framing
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import HASH_BYTES, content_hash
from protocol.messages import BatchResult, BlockRef, Entry, Failure, FileCommit, NamespaceInfo
from protocol.paths import ancestors, is_within, parent_of
from server import auth
from server.coalesce import Coalescer

NOTIFY_CHANNEL = "ferry_changes"
MAX_BATCH = 1000
DEVICES_CHANNEL = "ferry_devices"
MEMBERS_CHANNEL = "ferry_members"  # payload: a user id whose visible namespaces changed
_VERSION_COLS = (
    "v.version_id, v.file_id, v.path, v.kind, v.deleted, v.size, v.mtime_ns, v.executable,"
    " v.content_hash, v.block_hashes, v.block_sizes, v.created_at, d.name AS device_name"
)
_DEVICE_JOIN = "LEFT JOIN devices d ON d.device_id = v.device_id"  # the device_name of _VERSION_COLS
_VERSION_FROM = f"versions v {_DEVICE_JOIN}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user on one device."""

    user_id: int
    user: str
    device_id: int
    device: str
    root_ns: int


def _entry(row: asyncpg.Record, with_blocks: bool) -> Entry:
    blocks = None
    if with_blocks:
        raw, sizes = row["block_hashes"], row["block_sizes"]
        blocks = [BlockRef(raw[i * HASH_BYTES : (i + 1) * HASH_BYTES], s) for i, s in enumerate(sizes)]
    return Entry(
        path=row["path"],
        kind=row["kind"],
        file_id=row["file_id"],
        version=row["version_id"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        executable=row["executable"],
        content_hash=row["content_hash"],
        blocks=blocks,
        deleted=row["deleted"],
        device=row["device_name"],
        committed_ns=_ns(row["created_at"]),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(when: datetime) -> int:
    """Exact nanoseconds (``timestamp() * 1e9`` is off by up to ~200 ns)."""
    t = when - _EPOCH
    return (t.days * 86_400_000_000 + t.seconds * 1_000_000 + t.microseconds) * 1000


def _conflict(path: str, current: Entry | None, why: str) -> ProtocolError:
    detail = {"current": framing.to_wire(current) if current else None}
    return ProtocolError(ErrorCode.CONFLICT, f"{path}: {why}", detail)


class MetaStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        # block bookkeeping for many small blocks in flight: one statement per burst
        self._stored = Coalescer(self._stored_many)
        self._record = Coalescer(self._record_many)
        self._readable = Coalescer(self._readable_many)

    # --- users and devices ---------------------------------------------------

    async def add_user(self, name: str, password: str) -> int:
        if not name or len(name) > 64 or not name.isprintable() or "/" in name:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid user name {name!r}")
        hashed = await auth.hash_password(password)
        async with self.pool.acquire() as conn, conn.transaction():
            try:
                user_id = await conn.fetchval(
                    "INSERT INTO users (name, password_hash) VALUES ($1, $2) RETURNING user_id",
                    name,
                    hashed,
                )
            except asyncpg.UniqueViolationError:
                raise ProtocolError(ErrorCode.EXISTS, f"user {name!r} already exists") from None
            ns = await conn.fetchval(
                "INSERT INTO namespaces (owner_id) VALUES ($1) RETURNING namespace_id", user_id
            )
            await conn.execute("UPDATE users SET root_ns = $1 WHERE user_id = $2", ns, user_id)
            await conn.execute(
                "INSERT INTO members (namespace_id, user_id, role, mount_path) VALUES ($1, $2, 'owner', '/')",
                ns,
                user_id,
            )
        return int(user_id)

    async def set_password(self, name: str, password: str) -> None:
        done = await self.pool.execute(
            "UPDATE users SET password_hash = $2 WHERE name = $1", name, await auth.hash_password(password)
        )
        if done.endswith(" 0"):
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no user named {name!r}")

    async def list_users(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT u.name, u.created_at, count(d.device_id) FILTER (WHERE d.revoked_at IS NULL) AS devices"
            " FROM users u LEFT JOIN devices d USING (user_id) GROUP BY u.user_id ORDER BY u.name"
        )
        return [
            {"name": r["name"], "devices": r["devices"], "created": r["created_at"].isoformat()} for r in rows
        ]

    async def login(self, name: str, password: str, device: str) -> tuple[str, int]:
        row = await self.pool.fetchrow("SELECT user_id, password_hash FROM users WHERE name = $1", name)
        # verify against a dummy hash for unknown users so timing does not reveal who exists
        stored = row["password_hash"] if row else _DUMMY_HASH
        if not await auth.verify_password(stored, password) or row is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "wrong user name or password")
        token = auth.new_token()
        device_id = await self.pool.fetchval(
            "INSERT INTO devices (user_id, name, token_hash) VALUES ($1, $2, $3) RETURNING device_id",
            row["user_id"],
            device[:128] or "device",
            auth.token_digest(token),
        )
        return token, int(device_id)

    async def authenticate(self, token: str) -> Principal:
        """The device a token names. A read; ``last_seen`` is written at most once
        a minute per device, since the HTTP API authenticates every request and
        a write (and its WAL flush) per block fetched would be most of its cost."""
        row = await self.pool.fetchrow(
            "SELECT u.user_id, u.name AS user, d.device_id, d.name AS device, u.root_ns,"
            " coalesce(d.last_seen < now() - interval '1 minute', true) AS stale"
            " FROM devices d JOIN users u USING (user_id) WHERE d.token_hash = $1 AND d.revoked_at IS NULL",
            auth.token_digest(token),
        )
        if row is None:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "invalid or revoked device token; run `ferry login` again"
            )
        fields = dict(row)
        if fields.pop("stale"):
            await self.pool.execute(
                "UPDATE devices SET last_seen = now() WHERE device_id = $1", row["device_id"]
            )
        return Principal(**fields)

    async def list_devices(self, user: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT d.device_id, u.name AS user, d.name, d.created_at, d.last_seen, d.revoked_at"
            " FROM devices d JOIN users u USING (user_id) WHERE $1::text IS NULL OR u.name = $1"
            " ORDER BY d.device_id",
            user,
        )
        return [
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(r).items()} for r in rows
        ]

    async def revoke_device(self, device_id: int, user_id: int | None = None) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            done = await conn.execute(
                "UPDATE devices SET revoked_at = now() WHERE device_id = $1 AND revoked_at IS NULL"
                " AND ($2::bigint IS NULL OR user_id = $2)",
                device_id,
                user_id,
            )
            if done.endswith(" 0"):
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no active device {device_id}")
            await conn.execute("SELECT pg_notify($1, $2)", DEVICES_CHANNEL, str(device_id))

    async def device_active(self, device_id: int) -> bool:
        return bool(
            await self.pool.fetchval("SELECT revoked_at IS NULL FROM devices WHERE device_id = $1", device_id)
        )

    # --- namespaces ----------------------------------------------------------

    async def namespaces(self, who: Principal) -> list[NamespaceInfo]:
        rows = await self.pool.fetch(
            "SELECT m.namespace_id, m.mount_path, m.role, n.head_seq FROM members m"
            " JOIN namespaces n USING (namespace_id) WHERE m.user_id = $1 ORDER BY m.mount_path",
            who.user_id,
        )
        return [NamespaceInfo(r["namespace_id"], r["mount_path"], r["role"], r["head_seq"]) for r in rows]

    async def _role(self, conn: Any, who: Principal, ns: int | None) -> tuple[int, str]:
        ns = who.root_ns if ns is None else ns
        role = await conn.fetchval(
            "SELECT role FROM members WHERE namespace_id = $1 AND user_id = $2", ns, who.user_id
        )
        if role is None:  # same answer whether or not it exists
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no namespace {ns} visible to you")
        return ns, role

    async def _writable(self, conn: Any, who: Principal, ns: int | None) -> int:
        ns, role = await self._role(conn, who, ns)
        if role == "viewer":
            raise ProtocolError(
                ErrorCode.READ_ONLY,
                "you may only read this shared folder (viewer); your change was not saved",
            )
        return ns

    # --- reads -----------------------------------------------------------------

    async def stat(self, who: Principal, path: str, ns: int | None = None) -> Entry:
        async with self.pool.acquire() as conn:
            ns, _ = await self._role(conn, who, ns)
            if path == "/":
                return Entry("/", "dir", 0, 0)
            row = await conn.fetchrow(
                f"SELECT {_VERSION_COLS} FROM heads h JOIN {_VERSION_FROM}"
                " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
                " WHERE h.namespace_id = $1 AND h.path = $2",
                ns,
                path,
            )
        if row is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder")
        return _entry(row, with_blocks=True)

    async def list_folder(
        self, who: Principal, path: str, ns: int | None, after: str | None, limit: int
    ) -> tuple[list[Entry], str | None]:
        limit = max(1, min(limit, 5000))
        async with self.pool.acquire() as conn:
            ns, _ = await self._role(conn, who, ns)
            if path != "/":
                kind = await conn.fetchval(
                    "SELECT kind FROM heads WHERE namespace_id = $1 AND path = $2", ns, path
                )
                if kind is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such folder")
                if kind != "dir":
                    raise ProtocolError(ErrorCode.NOT_A_DIRECTORY, f"{path} is a file, not a folder")
            rows = await conn.fetch(
                f"SELECT {_VERSION_COLS} FROM heads h JOIN {_VERSION_FROM}"
                " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
                " WHERE h.namespace_id = $1 AND h.parent = $2 AND h.path > $3 ORDER BY h.path LIMIT $4",
                ns,
                path,
                after or "",
                limit + 1,
            )
        entries = [_entry(r, with_blocks=False) for r in rows[:limit]]
        return entries, (entries[-1].path if len(rows) > limit else None)

    # One page of a namespace's journal after a cursor, with each entry's version:
    # the page is cut first, then each entry's version is found by its primary key
    # (OFFSET 0 keeps that a per-entry probe), so a page costs the same in a
    # namespace of ten versions or ten million. Written as a plain join, the
    # planner hashed every version of the namespace for each page, or, with a
    # plan cached while the tables were nearly empty, compared every journal row
    # after the cursor with every version (tests/server/test_plans.py).
    _CHANGES = (
        f"SELECT j.seq, {_VERSION_COLS} FROM"
        " (SELECT seq, version_id FROM journal WHERE namespace_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) j"
        " CROSS JOIN LATERAL"
        " (SELECT * FROM versions WHERE namespace_id = $1 AND version_id = j.version_id OFFSET 0) v"
        f" {_DEVICE_JOIN} ORDER BY j.seq"
    )

    async def list_changes(
        self, who: Principal, ns: int | None, since: int, limit: int
    ) -> tuple[int, list[Entry], int, bool]:
        limit = max(1, min(limit, 5000))
        async with self.pool.acquire() as conn:
            ns, _ = await self._role(conn, who, ns)
            head = await conn.fetchval("SELECT head_seq FROM namespaces WHERE namespace_id = $1", ns)
            if since < 0 or since > head:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST,
                    f"cursor {since} is not valid for namespace {ns} (head is {head}); resync from 0",
                )
            rows = await conn.fetch(self._CHANGES, ns, since, limit)
        cursor = rows[-1]["seq"] if rows else since
        return ns, [_entry(r, with_blocks=True) for r in rows], cursor, cursor < head

    # --- blocks ------------------------------------------------------------------

    # Which of the hashes $2 user $1 may read: one index probe per hash asked
    # about (OFFSET 0 keeps each EXISTS a per-row probe, whatever the planner's
    # statistics say). Written as "hash = ANY($2)" filters, a fresh server's
    # planner (before ANALYZE had seen its growing tables) read every block row
    # of the user's namespace and tested each against the array, so the cost
    # grew with the namespace instead of with the question (bench/README.md,
    # sync.py run 10).
    _READABLE = (
        "SELECT q.hash FROM unnest($2::bytea[]) AS q(hash)"
        " WHERE EXISTS (SELECT 1 FROM uploads u WHERE u.user_id = $1 AND u.hash = q.hash OFFSET 0)"
        " OR EXISTS (SELECT 1 FROM namespace_blocks nb JOIN members m ON m.namespace_id = nb.namespace_id"
        " WHERE m.user_id = $1 AND nb.hash = q.hash OFFSET 0)"
    )

    @staticmethod
    def _readable_stored(lock: str = "") -> str:
        """The stored blocks (hash, size; row locked by ``lock``) among those
        ``_READABLE`` names: each looked up by its hash too, not by a scan of
        every block of the server joined to the answer."""
        return (
            f"SELECT b.hash, b.size FROM ({MetaStore._READABLE}) r CROSS JOIN LATERAL"
            f" (SELECT hash, size FROM blocks WHERE hash = r.hash OFFSET 0 {lock}) b"
        )

    async def missing_blocks(self, who: Principal, hashes: Sequence[bytes]) -> list[bytes]:
        """Blocks this user must send: all but those stored AND already
        readable by them (so nobody learns what others have stored)."""
        if not hashes:
            return []
        rows = await self.pool.fetch(
            f"{self._readable_stored()} WHERE {_NOT_DOOMED}",
            who.user_id,
            list(hashes),
        )
        have = {bytes(r["hash"]) for r in rows}
        return [h for h in dict.fromkeys(hashes) if h not in have]

    async def can_read_block(self, who: Principal, h: bytes) -> bool:
        return await self._readable((who.user_id, h))

    async def _readable_many(self, asks: list[tuple[int, bytes]]) -> list[bool]:
        """One ``_READABLE`` query per user asking (a burst is nearly always one user)."""
        readable: set[tuple[int, bytes]] = set()
        for user in {u for u, _ in asks}:
            rows = await self.pool.fetch(self._READABLE, user, list({h for u, h in asks if u == user}))
            readable.update((user, bytes(r["hash"])) for r in rows)
        return [ask in readable for ask in asks]

    async def block_stored(self, h: bytes) -> bool:
        return await self._stored(h)

    async def _stored_many(self, hashes: list[bytes]) -> list[bool]:
        rows = await self.pool.fetch(
            "SELECT hash FROM blocks WHERE hash = ANY($1::bytea[])", list(set(hashes))
        )
        have = {bytes(r["hash"]) for r in rows}
        return [h in have for h in hashes]

    async def claim_stored_block(self, who: Principal, h: bytes) -> bool:
        """Record that ``who`` uploaded a block that is already stored, holding
        its row while doing so: GC (which locks rows before deleting them) can
        then never delete it between our check and our upload record. False if
        the block is gone (collected since the caller looked) or may be (a GC
        was killed deleting it: ``gc_doomed``): store it again."""
        claimed = await self.pool.fetchval(
            "WITH b AS (SELECT hash FROM blocks WHERE hash = $2 FOR KEY SHARE)"
            " INSERT INTO uploads (user_id, hash) SELECT $1, hash FROM b"
            " ON CONFLICT (user_id, hash) DO UPDATE SET created_at = now() RETURNING true",
            who.user_id,
            h,
        )
        # a fresh statement, after any GC holding the row has finished: its mark is final
        return bool(claimed) and not await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM gc_doomed WHERE hash = $1)", h
        )

    async def record_upload(self, who: Principal, h: bytes, size: int) -> None:
        """The block is stored (durably): its row, and this user's upload of it."""
        await self._record((who.user_id, h, size))

    async def _record_many(self, uploads: list[tuple[int, bytes, int]]) -> list[None]:
        blocks = {h: size for _, h, size in uploads}
        pairs = sorted({(user, h) for user, h, _ in uploads})  # a row once per statement, in one order
        await self.pool.execute(
            "WITH b AS (INSERT INTO blocks (hash, size) SELECT * FROM unnest($3::bytea[], $4::integer[])"
            " ORDER BY 1 ON CONFLICT DO NOTHING),"
            " d AS (DELETE FROM gc_doomed WHERE hash = ANY($3::bytea[]))"  # stored again: whole
            " INSERT INTO uploads (user_id, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])"
            " ON CONFLICT (user_id, hash) DO UPDATE SET created_at = now()",
            [u for u, _ in pairs],
            [h for _, h in pairs],
            list(blocks),
            list(blocks.values()),
        )
        return [None] * len(uploads)

    # --- changes -----------------------------------------------------------------

    async def commit_file(
        self,
        who: Principal,
        key: str,
        ns: int | None,
        path: str,
        parent: int | None,
        size: int,
        mtime_ns: int,
        executable: bool,
        blocks: Sequence[bytes],
    ) -> tuple[int, Entry]:
        return await self._change(
            who, key, ns, _file_change(path, parent, size, mtime_ns, executable, blocks)
        )

    async def commit_batch(
        self, who: Principal, key: str, ns: int | None, files: Sequence[FileCommit]
    ) -> tuple[int, list[BatchResult]]:
        """Commit many files in one transaction; each file stands or falls on its own."""
        if len(files) > MAX_BATCH:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"commit at most {MAX_BATCH} files per batch")

        if len({f.path for f in files}) != len(files):
            # a path twice in one batch: the later one is checked against the earlier's result
            return await self._change(who, key, ns, self._batch_one_by_one(files), list[BatchResult])

        async def change(tx: _Tx) -> list[BatchResult]:
            """Every check first, against the heads and block rows read in two queries
            (a failing file writes nothing, so needs no savepoint), then all the writes
            in a few set-based statements."""
            heads = await tx.heads_at({f.path for f in files} | {a for f in files for a in ancestors(f.path)})
            sizes_of = await tx.block_sizes_of({h for f in files for h in f.blocks})
            planned: dict[str, str] = {}  # path -> kind, written by an earlier file of this batch
            writes: list[_NewVersion] = []
            results: list[BatchResult | int] = []  # an int: the index of the file's write
            for f in files:
                try:
                    head = heads.get(f.path)
                    if planned.get(f.path) == "dir":
                        raise ProtocolError(ErrorCode.IS_A_DIRECTORY, f"{f.path} is a folder")
                    checked = _check_file(f.path, f.parent, f.size, f.mtime_ns, f.executable, f.blocks, head,
                                          sizes_of)  # fmt: skip
                    if isinstance(checked, Entry):
                        results.append(BatchResult(entry=checked))
                        continue
                    folders = []
                    for folder in ancestors(f.path):
                        kind = planned.get(folder) or (heads[folder].kind if folder in heads else None)
                        if kind is None:
                            folders.append(_NewVersion(None, folder, "dir"))
                        elif kind != "dir":
                            raise ProtocolError(
                                ErrorCode.NOT_A_DIRECTORY, f"{folder} is a file, not a folder"
                            )
                except ProtocolError as e:
                    results.append(BatchResult(failure=Failure(e.code.value, e.message, e.detail)))
                    continue
                for w in folders:
                    planned[w.path] = "dir"
                    writes.append(w)
                planned[f.path] = "file"
                results.append(len(writes))
                digest, sizes = checked
                writes.append(_NewVersion(head.file_id if head else None, f.path, "file", f.size, f.mtime_ns,
                                          f.executable, digest, f.blocks, sizes))  # fmt: skip
            entries = await tx.write_many(writes)
            return [r if isinstance(r, BatchResult) else BatchResult(entry=entries[r]) for r in results]

        return await self._change(who, key, ns, change, list[BatchResult])

    @staticmethod
    def _batch_one_by_one(files: Sequence[FileCommit]) -> Callable[[_Tx], Awaitable[list[BatchResult]]]:
        async def change(tx: _Tx) -> list[BatchResult]:
            results = []
            for f in files:
                before = tx.seq
                try:
                    async with tx.conn.transaction():  # a savepoint: a failed file leaves no trace
                        entry = await _file_change(
                            f.path, f.parent, f.size, f.mtime_ns, f.executable, f.blocks
                        )(tx)
                    results.append(BatchResult(entry=entry))
                except ProtocolError as e:
                    tx.seq = before
                    results.append(BatchResult(failure=Failure(e.code.value, e.message, e.detail)))
            return results

        return change

    async def mkdir(self, who: Principal, key: str, ns: int | None, path: str) -> tuple[int, Entry]:
        if path == "/":
            raise ProtocolError(ErrorCode.EXISTS, "the root folder always exists")

        async def change(tx: _Tx) -> Entry:
            head = await tx.head(path)
            if head is not None:
                if head.kind != "dir":
                    raise ProtocolError(ErrorCode.EXISTS, f"{path}: a file is already there")
                return head
            await tx.ensure_folders(path)
            return await tx.write(file_id=None, path=path, kind="dir")

        return await self._change(who, key, ns, change)

    async def delete(
        self,
        who: Principal,
        key: str,
        ns: int | None,
        path: str,
        parent: int | None,
        newest: int | None = None,
    ) -> tuple[int, Entry]:
        if path == "/":
            raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be deleted")

        async def change(tx: _Tx) -> Entry:
            head = await tx.head(path)
            if head is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder")
            if parent is not None and head.version != parent:
                raise _conflict(path, head, "changed on the server since your version")
            children = await tx.subtree(path)
            if newest is not None and any(c.version > newest for c in children):
                raise _conflict(path, head, "something in it changed on the server since you looked")
            # descendants first, deepest first, then the entry itself
            for child in reversed(children):
                await tx.write_from(child, path=child.path, deleted=True)
            return await tx.write_from(head, path=path, deleted=True)

        return await self._change(who, key, ns, change)

    async def move(
        self, who: Principal, key: str, ns: int | None, src: str, dst: str, parent: int | None
    ) -> tuple[int, Entry]:
        if "/" in (src, dst):
            raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be moved or replaced")
        if src != dst and is_within(dst, src):
            raise ProtocolError(ErrorCode.BAD_PATH, f"cannot move {src} into itself ({dst})")

        async def change(tx: _Tx) -> Entry:
            head = await tx.head(src)
            if head is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"{src}: no such file or folder")
            if parent is not None and head.version != parent:
                raise _conflict(src, head, "changed on the server since your version")
            if src == dst:
                return head
            target = await tx.head(dst)
            # a case-only rename (a.txt -> A.txt) is a move, not a collision
            if target is not None and target.file_id != head.file_id:
                raise ProtocolError(ErrorCode.EXISTS, f"{dst}: something is already there")
            await tx.ensure_folders(dst)
            moved = await tx.write_from(head, path=dst)
            for child in await tx.subtree(src):
                await tx.write_from(child, path=dst + child.path[len(src) :])
            return moved

        return await self._change(who, key, ns, change)

    async def move_across(
        self, who: Principal, key: str, src_ns: int | None, src: str, dst_ns: int | None, dst: str,
        parent: int | None,
    ) -> tuple[int, Entry]:  # fmt: skip
        """Move ``src`` (a file or a folder with its contents) of one namespace to
        ``dst`` of another: new files at ``dst`` (their history starts there; the
        old one stays with the source namespace), deletions at ``src``, in one
        transaction holding both namespaces' locks (taken in id order)."""
        if not key or len(key) > 200:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "a change needs an idempotency key of 1-200 characters"
            )
        async with self.pool.acquire() as conn, conn.transaction():
            a = await self._writable(conn, who, src_ns)
            b = await self._writable(conn, who, dst_ns)
            txs = {}
            for ns in sorted({a, b}):
                txs[ns] = await _Tx.begin(conn, who, ns)
            done = await conn.fetchval(
                "SELECT result FROM requests WHERE user_id = $1 AND key = $2", who.user_id, key
            )
            if done is not None:
                return cast(tuple[int, Entry], _replay(done, Entry))
            source, target = txs[a], txs[b]
            used = await target.owner_usage()
            head = await source.head(src)
            if head is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"{src}: no such file or folder")
            if parent is not None and head.version != parent:
                raise _conflict(src, head, "changed on the server since your version")
            if await target.head(dst) is not None:
                raise ProtocolError(ErrorCode.EXISTS, f"{dst}: something is already there")
            children = await source.subtree(src)
            await target.ensure_folders(dst)
            copies = await target.write_many(
                [
                    _NewVersion(None, dst + e.path[len(src) :], e.kind, e.size, e.mtime_ns, e.executable,
                                e.content_hash, [x.hash for x in e.blocks or []], [x.size for x in e.blocks or []])
                    for e in [head, *children]
                ]
            )  # fmt: skip
            for child in reversed(children):
                await source.write_from(child, path=child.path, deleted=True)
            await source.write_from(head, path=src, deleted=True)
            await target.check_quota(used)
            await source.finish()
            seq = await target.finish()
            result = framing.dumps({"seq": seq, "entry": copies[0]}).decode()
            await conn.execute(
                "INSERT INTO requests (user_id, key, result) VALUES ($1, $2, $3::jsonb)",
                who.user_id,
                key,
                result,
            )
        return seq, copies[0]

    async def _change(
        self, who: Principal, key: str, ns: int | None, change: Any, result_type: Any = Entry
    ) -> tuple[int, Any]:
        if not key or len(key) > 200:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "a change needs an idempotency key of 1-200 characters"
            )
        async with self.pool.acquire() as conn:
            for attempt in range(2):
                done = await conn.fetchval(
                    "SELECT result FROM requests WHERE user_id = $1 AND key = $2", who.user_id, key
                )
                if done is not None:
                    return _replay(done, result_type)
                try:
                    async with conn.transaction():
                        ns_id = await self._writable(conn, who, ns)
                        tx = await _Tx.begin(conn, who, ns_id)
                        # again under the namespace lock: the same request may have been
                        # in flight twice, and the other one committed while we waited
                        done = await conn.fetchval(
                            "SELECT result FROM requests WHERE user_id = $1 AND key = $2", who.user_id, key
                        )
                        if done is not None:
                            return _replay(done, result_type)
                        used = await tx.owner_usage()
                        entry = await change(tx)
                        await tx.check_quota(used)
                        seq = await tx.finish()
                        result = framing.dumps({"seq": seq, "entry": entry}).decode()
                        await conn.execute(
                            "INSERT INTO requests (user_id, key, result) VALUES ($1, $2, $3::jsonb)",
                            who.user_id,
                            key,
                            result,
                        )
                        failpoints.hit("server.commit.before")
                    failpoints.hit("server.commit.after")
                    return seq, entry
                except asyncpg.UniqueViolationError:
                    if attempt:  # a concurrent retry of the same request won; return its result
                        raise
        raise AssertionError("unreachable")


def _replay(result: str, result_type: Any) -> tuple[int, Any]:
    body = orjson.loads(result)
    return body["seq"], framing.from_wire(result_type, body["entry"], "entry")


def _file_change(
    path: str, parent: int | None, size: int, mtime_ns: int, executable: bool, blocks: Sequence[bytes]
) -> Callable[[_Tx], Awaitable[Entry]]:
    """The change that makes ``path`` a file with these blocks, based on ``parent``."""
    if path == "/":
        raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be written as a file")
    if size < 0:
        raise ProtocolError(ErrorCode.BAD_ENTRY, "size cannot be negative")

    async def change(tx: _Tx) -> Entry:
        head = await tx.head(path)
        checked = _check_file(path, parent, size, mtime_ns, executable, blocks, head,
                              await tx.block_sizes_of(set(blocks)))  # fmt: skip
        if isinstance(checked, Entry):
            return checked
        digest, sizes = checked
        await tx.ensure_folders(path)
        return await tx.write(
            file_id=head.file_id if head else None,
            path=path,
            kind="file",
            size=size,
            mtime_ns=mtime_ns,
            executable=executable,
            content_hash=digest,
            blocks=blocks,
            sizes=sizes,
        )

    return change


def _check_file(
    path: str,
    parent: int | None,
    size: int,
    mtime_ns: int,
    executable: bool,
    blocks: Sequence[bytes],
    head: Entry | None,
    sizes_of: dict[bytes, int],
) -> Entry | tuple[bytes, list[int]]:
    """May ``path`` become this file, given its head and the sizes of the
    stored blocks? The head itself when nothing would change, else the new
    content hash and block sizes; a ``ProtocolError`` when it may not."""
    if path == "/":
        raise ProtocolError(ErrorCode.BAD_PATH, "the root folder cannot be written as a file")
    if size < 0:
        raise ProtocolError(ErrorCode.BAD_ENTRY, "size cannot be negative")
    if head is not None and head.kind == "dir":
        raise ProtocolError(ErrorCode.IS_A_DIRECTORY, f"{path} is a folder")
    if (head.version if head else None) != parent:
        why = "changed on the server since your version" if head else "no longer exists on the server"
        if parent is None:
            why = "already exists on the server"
        raise _conflict(path, head, why)
    missing = [h for h in dict.fromkeys(blocks) if h not in sizes_of]
    if missing:
        raise ProtocolError(
            ErrorCode.MISSING_BLOCKS,
            f"{len(missing)} block(s) must be uploaded before this commit",
            {"missing": [h.hex() for h in missing]},
        )
    sizes = [sizes_of[h] for h in blocks]
    if sum(sizes) != size:
        raise ProtocolError(
            ErrorCode.BAD_ENTRY, f"{path}: size {size} does not match its blocks ({sum(sizes)} bytes)"
        )
    digest = content_hash(blocks)
    if head is not None and (head.content_hash, head.size, head.mtime_ns, head.executable) == (
        digest,
        size,
        mtime_ns,
        executable,
    ):
        return head  # nothing changed: no new version
    return digest, sizes


@dataclass(frozen=True, slots=True)
class _NewVersion:
    """A version ``_Tx.write_many`` writes: a new file (``file_id`` None) or a
    new version of the file at that path, never a move or a deletion."""

    file_id: int | None
    path: str
    kind: str
    size: int = 0
    mtime_ns: int = 0
    executable: bool = False
    content_hash: bytes | None = None
    blocks: Sequence[bytes] = ()
    sizes: Sequence[int] = ()


# an Argon2 hash (default parameters) of a password nobody has, for unknown users
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$rP9nHTS4s7SgeQ9bt3YSNg$Z2qThojX4FLvH6E3TT1g2vtTI2CAv1C49qHhiAp4W4k"
)
# a block a GC was killed deleting may be gone from the store: not stored (server.gc)
_NOT_DOOMED = "NOT EXISTS (SELECT 1 FROM gc_doomed d WHERE d.hash = b.hash)"


async def usage(conn: Any, user_id: int) -> int:
    """Bytes of the latest versions of every file in the namespaces ``user_id``
    owns (their root and the folders they shared)."""
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(v.size), 0) FROM namespaces n JOIN heads h ON h.namespace_id = n.namespace_id"
            " JOIN versions v ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
            " WHERE n.owner_id = $1 AND h.kind = 'file'",
            user_id,
        )
    )


class _Tx:
    """One change transaction on one (locked) namespace."""

    def __init__(self, conn: Any, who: Principal, ns: int, seq: int, now: datetime) -> None:
        self.conn, self.who, self.ns = conn, who, ns
        self.start_seq = self.seq = seq
        self.now = now  # commit time of every row this change writes
        self.owner = 0
        # where shared folders are mounted in this (root) namespace: nothing may be written there
        self.mounts: list[str] = []
        self.quota: int | None = None

    @classmethod
    async def begin(cls, conn: Any, who: Principal, ns: int) -> _Tx:
        row = await conn.fetchrow(
            "SELECT n.head_seq, n.last_commit_at, n.kind, n.owner_id, u.quota_bytes,"
            " clock_timestamp() AS clock FROM namespaces n JOIN users u ON u.user_id = n.owner_id"
            " WHERE n.namespace_id = $1 FOR UPDATE OF n",
            ns,
        )
        # strictly later than the previous change, so a time names one cut (server.versions)
        last = row["last_commit_at"]
        now = row["clock"] if last is None else max(row["clock"], last + timedelta(microseconds=1))
        tx = cls(conn, who, ns, row["head_seq"], now)
        tx.owner, tx.quota = row["owner_id"], row["quota_bytes"]
        if row["kind"] == "root":
            tx.mounts = [
                r[0]
                for r in await conn.fetch(
                    "SELECT mount_path FROM members WHERE user_id = $1 AND namespace_id <> $2",
                    row["owner_id"],
                    ns,
                )
            ]
        return tx

    def check_path(self, path: str) -> None:
        """Refuse a write at or under a shared folder's mount point in a root namespace:
        that folder's contents live in its own namespace."""
        for mount in self.mounts:
            if is_within(path, mount):
                raise ProtocolError(
                    ErrorCode.BAD_PATH, f"{path}: {mount} is a shared folder; write into its namespace"
                )

    async def owner_usage(self) -> int | None:
        """Bytes the namespace's owner uses now, if they have a quota (else None).
        Locks the owner's row, so changes counted against one quota run one at a time."""
        if self.quota is None:
            return None
        await self.conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", self.owner)
        return await usage(self.conn, self.owner)

    async def check_quota(self, before: int | None) -> None:
        """After the change: refuse it (the caller rolls back) if it grew the owner's
        bytes past the quota. A change that frees space is always allowed."""
        if before is None or self.quota is None or self.seq == self.start_seq:
            return
        after = await usage(self.conn, self.owner)
        if after > before and after > self.quota:
            raise ProtocolError(
                ErrorCode.QUOTA_EXCEEDED,
                f"storage quota exceeded: this change needs {after - before} more bytes, "
                f"{max(self.quota - before, 0)} of {self.quota} are free; delete files or ask for more space",
                {"quota": self.quota, "used": before, "needed": after - before},
            )

    async def head(self, path: str) -> Entry | None:
        row = await self.conn.fetchrow(
            f"SELECT {_VERSION_COLS} FROM heads h JOIN {_VERSION_FROM}"
            " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
            " WHERE h.namespace_id = $1 AND h.path = $2",
            self.ns,
            path,
        )
        return _entry(row, with_blocks=True) if row else None

    async def subtree(self, folder: str) -> list[Entry]:
        """Every live entry strictly below ``folder``, parents before children."""
        rows = await self.conn.fetch(
            f"SELECT {_VERSION_COLS} FROM heads h JOIN {_VERSION_FROM}"
            " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
            " WHERE h.namespace_id = $1 AND h.path > $2 AND h.path < $3 ORDER BY h.path",
            self.ns,
            folder + "/",
            folder + "0",  # '0' sorts right after '/' in the C collation
        )
        return [_entry(r, with_blocks=True) for r in rows]

    async def ensure_folders(self, path: str) -> None:
        """Create missing ancestor folders (like mkdir -p); a file in the way is an error."""
        for folder in ancestors(path):
            head = await self.head(folder)
            if head is None:
                await self.write(file_id=None, path=folder, kind="dir")
            elif head.kind != "dir":
                raise ProtocolError(ErrorCode.NOT_A_DIRECTORY, f"{folder} is a file, not a folder")

    async def heads_at(self, paths: set[str]) -> dict[str, Entry]:
        """The live entries at these paths (one query)."""
        rows = await self.conn.fetch(
            f"SELECT {_VERSION_COLS} FROM heads h JOIN {_VERSION_FROM}"
            " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
            " WHERE h.namespace_id = $1 AND h.path = ANY($2::text[])",
            self.ns,
            list(paths),
        )
        return {r["path"]: _entry(r, with_blocks=True) for r in rows}

    async def block_sizes_of(self, blocks: set[bytes]) -> dict[bytes, int]:
        """Sizes of the stored blocks among ``blocks`` that this user may name."""
        if not blocks:
            return {}
        # FOR KEY SHARE: GC locks a block's row before deleting it, so a block
        # this commit names is either still there at commit or reported missing
        rows = await self.conn.fetch(
            MetaStore._readable_stored("FOR KEY SHARE"),
            self.who.user_id,
            list(blocks),
        )
        sizes = {bytes(r["hash"]): r["size"] for r in rows}
        if sizes:  # read after the locks, so a GC that held them has finished and its mark is final
            for r in await self.conn.fetch(
                "SELECT hash FROM gc_doomed WHERE hash = ANY($1::bytea[])", list(sizes)
            ):
                del sizes[bytes(r["hash"])]
        return sizes

    async def write_from(self, old: Entry, *, path: str, deleted: bool = False) -> Entry:
        blocks = [b.hash for b in old.blocks or []]
        return await self.write(
            file_id=old.file_id,
            path=path,
            kind=old.kind,
            size=old.size,
            mtime_ns=old.mtime_ns,
            executable=old.executable,
            content_hash=old.content_hash,
            blocks=blocks,
            sizes=[b.size for b in old.blocks or []],
            deleted=deleted,
            old_path=old.path,
        )

    async def write(
        self,
        *,
        file_id: int | None,
        path: str,
        kind: str,
        size: int = 0,
        mtime_ns: int = 0,
        executable: bool = False,
        content_hash: bytes | None = None,
        blocks: Sequence[bytes] = (),
        sizes: Sequence[int] = (),
        deleted: bool = False,
        old_path: str | None = None,
    ) -> Entry:
        """Append one version + journal row and move the head."""
        self.check_path(path)
        self.seq += 1
        row = await self.conn.fetchrow(
            "WITH n AS (SELECT nextval('ids') AS version_id),"
            " ids AS (SELECT version_id, coalesce($2::bigint, version_id) AS file_id FROM n)"
            " INSERT INTO versions (namespace_id, version_id, file_id, path, kind, deleted, size, mtime_ns,"
            " executable, content_hash, block_hashes, block_sizes, device_id, created_at)"
            " SELECT $1, version_id, file_id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 FROM ids"
            " RETURNING version_id, file_id, created_at",
            self.ns, file_id, path, kind, deleted, size, mtime_ns, executable, content_hash,
            b"".join(blocks), list(sizes), self.who.device_id, self.now,
        )  # fmt: skip
        # journal row, and path_history: close the file's open row, open one at its path
        await self.conn.execute(
            "WITH j AS (INSERT INTO journal (namespace_id, seq, version_id, committed_at)"
            " VALUES ($1, $2, $3, $4)),"
            " c AS (UPDATE path_history SET to_seq = $2"
            " WHERE namespace_id = $1 AND file_id = $5 AND to_seq IS NULL)"
            " INSERT INTO path_history (namespace_id, path, from_seq, file_id, version_id)"
            " SELECT $1, $6, $2, $5, $3 WHERE NOT $7::boolean",
            self.ns, self.seq, row["version_id"], self.now, row["file_id"], path, deleted,
        )  # fmt: skip
        if (old_path is not None and old_path != path) or deleted:
            await self.conn.execute(
                "DELETE FROM heads WHERE namespace_id = $1 AND path = $2", self.ns, old_path or path
            )
        if not deleted:
            await self.conn.execute(
                "INSERT INTO heads (namespace_id, path, parent, file_id, version_id, kind, seq)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (namespace_id, path) DO UPDATE"
                " SET file_id = EXCLUDED.file_id, version_id = EXCLUDED.version_id, kind = EXCLUDED.kind,"
                " seq = EXCLUDED.seq",
                self.ns, path, parent_of(path), row["file_id"], row["version_id"], kind, self.seq,
            )  # fmt: skip
        if blocks:
            await self.conn.execute(
                "INSERT INTO namespace_blocks (namespace_id, hash) SELECT $1, unnest($2::bytea[])"
                " ON CONFLICT DO NOTHING",
                self.ns,
                list(set(blocks)),
            )
        return Entry(
            path=path,
            kind=kind,  # type: ignore[arg-type]
            file_id=row["file_id"],
            version=row["version_id"],
            size=size,
            mtime_ns=mtime_ns,
            executable=executable,
            content_hash=content_hash,
            blocks=[BlockRef(h, s) for h, s in zip(blocks, sizes, strict=True)],
            deleted=deleted,
            device=self.who.device,
            committed_ns=_ns(row["created_at"]) if row["created_at"] else time.time_ns(),
        )

    async def write_many(self, new: Sequence[_NewVersion]) -> list[Entry]:
        """``write`` for many versions, in order, in a few statements whatever the
        count. Each file id at most once (no path written twice)."""
        if not new:
            return []
        for w in new:
            self.check_path(w.path)
        conn, ns = self.conn, self.ns
        ids = sorted(
            r[0] for r in await conn.fetch("SELECT nextval('ids') FROM generate_series(1, $1)", len(new))
        )
        seqs = list(range(self.seq + 1, self.seq + len(new) + 1))
        self.seq += len(new)
        files = [w.file_id if w.file_id is not None else vid for w, vid in zip(new, ids, strict=True)]
        await conn.executemany(
            "INSERT INTO versions (namespace_id, version_id, file_id, path, kind, size, mtime_ns, executable,"
            " content_hash, block_hashes, block_sizes, device_id, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            [(ns, vid, fid, w.path, w.kind, w.size, w.mtime_ns, w.executable, w.content_hash, b"".join(w.blocks),
              list(w.sizes), self.who.device_id, self.now) for w, vid, fid in zip(new, ids, files, strict=True)],
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO journal (namespace_id, seq, version_id, committed_at)"
            " SELECT $1::bigint, x.seq, x.version_id, $4 FROM unnest($2::bigint[], $3::bigint[]) AS x(seq, version_id)",
            ns, seqs, ids, self.now,
        )  # fmt: skip
        replaced = [(fid, seq) for w, fid, seq in zip(new, files, seqs, strict=True) if w.file_id is not None]
        if replaced:
            await conn.execute(
                "UPDATE path_history ph SET to_seq = c.to_seq"
                " FROM unnest($2::bigint[], $3::bigint[]) AS c(file_id, to_seq)"
                " WHERE ph.namespace_id = $1 AND ph.file_id = c.file_id AND ph.to_seq IS NULL",
                ns, [f for f, _ in replaced], [q for _, q in replaced],
            )  # fmt: skip
        paths = [w.path for w in new]
        await conn.execute(
            "INSERT INTO path_history (namespace_id, path, from_seq, file_id, version_id)"
            " SELECT $1::bigint, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[])",
            ns, paths, seqs, files, ids,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO heads (namespace_id, path, parent, file_id, version_id, kind, seq)"
            " SELECT $1::bigint, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],"
            " $7::bigint[]) ON CONFLICT (namespace_id, path) DO UPDATE SET parent = EXCLUDED.parent,"
            " file_id = EXCLUDED.file_id, version_id = EXCLUDED.version_id, kind = EXCLUDED.kind, seq = EXCLUDED.seq",
            ns, paths, [parent_of(p) for p in paths], files, ids, [w.kind for w in new], seqs,
        )  # fmt: skip
        hashes = list({h for w in new for h in w.blocks})
        if hashes:
            await conn.execute(
                "INSERT INTO namespace_blocks (namespace_id, hash) SELECT $1, unnest($2::bytea[])"
                " ON CONFLICT DO NOTHING",
                ns,
                hashes,
            )
        committed = _ns(self.now)
        return [
            Entry(
                path=w.path,
                kind=w.kind,  # type: ignore[arg-type]
                file_id=fid,
                version=vid,
                size=w.size,
                mtime_ns=w.mtime_ns,
                executable=w.executable,
                content_hash=w.content_hash,
                blocks=[BlockRef(h, n) for h, n in zip(w.blocks, w.sizes, strict=True)],
                deleted=False,
                device=self.who.device,
                committed_ns=committed,
            )
            for w, vid, fid in zip(new, ids, files, strict=True)
        ]

    async def finish(self) -> int:
        if self.seq != self.start_seq:
            await self.conn.execute(
                "UPDATE namespaces SET head_seq = $2, last_commit_at = $3 WHERE namespace_id = $1",
                self.ns,
                self.seq,
                self.now,
            )
            await self.conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{self.ns}:{self.seq}")
        return self.seq
