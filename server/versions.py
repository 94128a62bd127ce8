"""Version history, snapshots, restore, undelete and rewind.

Terms:

cut
    A journal seq ``S``: the namespace as it was right after entry ``S``. A
    time ``T`` names the cut of the last change committed at or before ``T``
    (commit times strictly increase per namespace, and every entry of one
    change shares its time, so a cut never splits a change).
path_history
    One row per version that stood at a path, valid over ``from_seq <= S <
    to_seq``; written by the same transaction as the journal
    (``metastore._Tx.write``). A snapshot at ``S`` is the rows valid at
    ``S``: one indexed range query, however long the history.

Reads check membership like every other request. Changes run through
:meth:`MetaStore._change`, so a restore or rewind is one transaction under
the namespace lock, journaled, idempotent and pushed like any commit. They
copy existing versions (:mod:`server.rewind` plans which): no block moves.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import DeletedFile, Entry, VersionInfo
from protocol.paths import validate_path
from server.metastore import _VERSION_COLS, MetaStore, Principal, _entry, _ns, _Tx
from server.rewind import Node, Op, plan

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_PAGE = 5000
_INFO_COLS = f"{_VERSION_COLS}, u.name AS author, v.damaged"
_WHO = "LEFT JOIN devices d ON d.device_id = v.device_id LEFT JOIN users u ON u.user_id = d.user_id"
_NODE_COLS = "v.version_id, v.file_id, v.path, v.kind, v.content_hash, v.size, v.mtime_ns, v.executable"
# paths at or under $2: $3 = $2 + '/', $4 = $2 + '0' ('0' sorts right after '/' in the C collation);
# the outer range is what the index scans, the inner test drops siblings like "$2-old"
_UNDER = "{a}.path >= $2 AND {a}.path < $4 AND ({a}.path = $2 OR {a}.path > $3)"
_VALID_AT = "ph.from_seq <= {s} AND (ph.to_seq IS NULL OR ph.to_seq > {s})"


to_ns = _ns


def from_ns(ns: int) -> datetime:
    """Server times have microseconds: round to the nearest."""
    try:
        return EPOCH + timedelta(microseconds=(ns + 500) // 1000)
    except OverflowError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{ns} ns is not a valid time") from None


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _range(path: str) -> tuple[str, str, str]:
    return (path, "/", "0") if path == "/" else (path, path + "/", path + "0")


def _node(r: asyncpg.Record, path: str | None = None) -> Node:
    content = (r["content_hash"], r["size"], r["mtime_ns"], r["executable"])
    return Node(path or r["path"], r["file_id"], r["version_id"], r["kind"], content)


def _info(r: asyncpg.Record, blocks: bool, current: int | None) -> VersionInfo:
    return VersionInfo(_entry(r, blocks), r["author"], r["version_id"] == current, r["damaged"])


def _no_version(path: str, version: int) -> ProtocolError:
    # the same answer for a version that does not exist, is another file's, or another user's
    return ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no version {version} (see `ferry history {path}`)")


def _no_root_history() -> ProtocolError:
    return ProtocolError(
        ErrorCode.BAD_REQUEST,
        "/ has no versions of its own; see it as it was with `ferry snapshot / --at TIME`",
    )


class VersionStore:
    """History queries and restore transactions over a :class:`MetaStore`."""

    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    # --- reads -----------------------------------------------------------------

    async def history(
        self, who: Principal, path: str, ns: int | None, before: int | None, limit: int
    ) -> tuple[list[VersionInfo], int | None]:
        if path == "/":
            raise _no_root_history()
        limit = max(1, min(limit, MAX_PAGE))
        async with self.meta.pool.acquire() as conn:
            ns_id, _ = await self.meta._role(conn, who, ns)
            file_id = await _file_at(conn, ns_id, path)
            if file_id is None:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"{path}: no such file or folder, now or in its history"
                )
            current = await _open_version(conn, ns_id, file_id)
            rows = await conn.fetch(
                f"SELECT {_INFO_COLS} FROM versions v {_WHO} WHERE v.namespace_id = $1 AND v.file_id = $2"
                " AND v.version_id < $3 ORDER BY v.version_id DESC LIMIT $4",
                ns_id,
                file_id,
                before if before is not None else 2**63 - 1,
                limit + 1,
            )
        infos = [_info(r, False, current) for r in rows[:limit]]
        return infos, (infos[-1].entry.version if len(rows) > limit else None)

    async def get_version(
        self, who: Principal, path: str, ns: int | None, version: int | None
    ) -> VersionInfo:
        async with self.meta.pool.acquire() as conn:
            ns_id, _ = await self.meta._role(conn, who, ns)
            if version is None:
                if path == "/":
                    return VersionInfo(Entry("/", "dir", 0, 0), current=True)
                row = await conn.fetchrow(
                    f"SELECT {_INFO_COLS} FROM heads h JOIN versions v ON v.namespace_id = h.namespace_id"
                    f" AND v.version_id = h.version_id {_WHO} WHERE h.namespace_id = $1 AND h.path = $2",
                    ns_id,
                    path,
                )
                if row is None:
                    raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder")
                return _info(row, True, row["version_id"])
            file_id = await _file_at(conn, ns_id, path) if path != "/" else None
            row = await conn.fetchrow(
                f"SELECT {_INFO_COLS} FROM versions v {_WHO}"
                " WHERE v.namespace_id = $1 AND v.version_id = $2 AND v.file_id = $3",
                ns_id,
                version,
                file_id,
            )
            if row is None:
                raise _no_version(path, version)
            if row["deleted"]:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND,
                    f"{path}: version {version} is its deletion and has no content; pick an earlier one",
                )
            return _info(row, True, await _open_version(conn, ns_id, row["file_id"]))

    async def deleted(
        self, who: Principal, path: str, ns: int | None, after: str | None, limit: int
    ) -> tuple[list[DeletedFile], str | None]:
        """Files and folders at or under ``path`` whose last version is a
        deletion and whose path is free, with the state a restore brings back."""
        limit = max(1, min(limit, MAX_PAGE))
        async with self.meta.pool.acquire() as conn:
            ns_id, _ = await self.meta._role(conn, who, ns)
            rows = await conn.fetch(
                f"SELECT DISTINCT ON (ph.path) {_INFO_COLS}, t.created_at AS deleted_at,"
                " td.name AS deleted_device, tu.name AS deleted_author"
                " FROM path_history ph"
                " JOIN versions v ON v.namespace_id = ph.namespace_id AND v.version_id = ph.version_id"
                f" {_WHO}"
                " JOIN journal j ON j.namespace_id = ph.namespace_id AND j.seq = ph.to_seq"
                " JOIN versions t ON t.namespace_id = j.namespace_id AND t.version_id = j.version_id"
                " LEFT JOIN devices td ON td.device_id = t.device_id"
                " LEFT JOIN users tu ON tu.user_id = td.user_id"
                f" WHERE ph.namespace_id = $1 AND ph.to_seq IS NOT NULL AND {_UNDER.format(a='ph')}"
                " AND ph.path > $5 AND t.deleted"
                " AND NOT EXISTS (SELECT 1 FROM versions later WHERE later.namespace_id = $1"
                " AND later.file_id = ph.file_id AND later.version_id > t.version_id)"
                " AND NOT EXISTS (SELECT 1 FROM heads h WHERE h.namespace_id = $1 AND h.path = ph.path)"
                " ORDER BY ph.path, ph.to_seq DESC LIMIT $6",
                ns_id,
                *_range(path),
                after or "",
                limit + 1,
            )
        files = [
            DeletedFile(_entry(r, False), to_ns(r["deleted_at"]), r["deleted_device"], r["deleted_author"])
            for r in rows[:limit]
        ]
        return files, (files[-1].entry.path if len(rows) > limit else None)

    async def snapshot(
        self, who: Principal, path: str, ns: int | None, at_ns: int, after: str | None, limit: int
    ) -> tuple[int, list[Entry], str | None]:
        """Everything at or under ``path`` at the cut ``at_ns`` names, by path."""
        limit = max(1, min(limit, MAX_PAGE))
        async with self.meta.pool.acquire() as conn:
            ns_id, _ = await self.meta._role(conn, who, ns)
            seq, at = await _cut(conn, ns_id, path, at_ns)
            lower = after or ""
            if path != "/" and await _existed(conn, ns_id, path, seq, at) == "dir":
                lower = max(lower, path)  # a folder's own entry is not part of its listing
            rows = await conn.fetch(
                f"SELECT {_VERSION_COLS} FROM path_history ph"
                " JOIN versions v ON v.namespace_id = ph.namespace_id AND v.version_id = ph.version_id"
                " LEFT JOIN devices d ON d.device_id = v.device_id"
                f" WHERE ph.namespace_id = $1 AND {_UNDER.format(a='ph')} AND ph.path > $5"
                f" AND {_VALID_AT.format(s='$6')} ORDER BY ph.path LIMIT $7",
                ns_id,
                *_range(path),
                lower,
                seq,
                limit + 1,
            )
        entries = [_entry(r, False) for r in rows[:limit]]
        return seq, entries, (entries[-1].path if len(rows) > limit else None)

    # --- changes ---------------------------------------------------------------

    async def restore(
        self, who: Principal, key: str, ns: int | None, path: str, version: int | None
    ) -> tuple[int, Entry, int | None]:
        """Make ``version`` of the file at ``path`` current (a new version), or
        without a version undelete ``path`` (a folder with what was in it)."""
        if path == "/":
            raise (
                _no_root_history()
                if version is not None
                else ProtocolError(ErrorCode.EXISTS, "/ always exists; rewind it with --at TIME")
            )

        async def change(tx: _Tx) -> Entry:
            if version is None:
                return await self._undelete(tx, path)
            return await self._restore_version(tx, path, version)

        return await self._run(who, key, ns, change)

    async def rewind(
        self, who: Principal, key: str, ns: int | None, path: str, at_ns: int
    ) -> tuple[int, Entry, int | None]:
        """Put ``path`` and everything under it back as it was at ``at_ns``."""

        async def change(tx: _Tx) -> Entry:
            seq, at = await _cut(tx.conn, tx.ns, path, at_ns)
            return await self._rewind(tx, path, seq, at)

        return await self._run(who, key, ns, change)

    async def _run(
        self, who: Principal, key: str, ns: int | None, change: Any
    ) -> tuple[int, Entry, int | None]:
        changes: int | None = None

        async def counted(tx: _Tx) -> Entry:
            nonlocal changes
            entry: Entry = await change(tx)
            changes = tx.seq - tx.start_seq
            return entry

        seq, entry = await self.meta._change(who, key, ns, counted)
        return seq, entry, changes  # changes stays None when the key was already done

    async def _restore_version(self, tx: _Tx, path: str, version: int) -> Entry:
        head = await _node_now(tx.conn, tx.ns, path)
        if head is not None and head.kind == "dir":
            raise ProtocolError(
                ErrorCode.IS_A_DIRECTORY,
                f"{path} is a folder now; restoring a file version there would replace it (move the folder first)",
            )
        file_id = head.file_id if head else await _file_at(tx.conn, tx.ns, path)
        src = await tx.conn.fetchrow(
            f"SELECT {_NODE_COLS}, v.deleted, v.damaged FROM versions v"
            " WHERE v.namespace_id = $1 AND v.version_id = $2 AND v.file_id = $3",
            tx.ns,
            version,
            file_id,
        )
        if src is None:
            raise _no_version(path, version)
        if src["deleted"]:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"{path}: version {version} is its deletion; pick the version before it",
            )
        if src["kind"] == "dir":
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"{path} is a folder: put it back as it was with --at TIME"
            )
        if src["damaged"]:
            raise ProtocolError(
                ErrorCode.BAD_ENTRY,
                f"{path}: version {version} is damaged (fsck found missing or corrupt blocks, and no replica"
                " exists to repair it); pick another version",
            )
        if head is None:
            moved = await _open_path(tx.conn, tx.ns, src["file_id"])
            if moved is not None:
                raise ProtocolError(
                    ErrorCode.NOT_FOUND, f"{path} was moved to {moved}; restore {moved} --version {version}"
                )
            await tx.ensure_folders(path)
        target = _node(src, path)
        if head is None or head.content != target.content:
            await _apply(tx, [Op(target.version, target.file_id, path, "file")], [head] if head else [])
        entry = await tx.head(path)
        assert entry is not None
        return entry

    async def _undelete(self, tx: _Tx, path: str) -> Entry:
        if await _node_now(tx.conn, tx.ns, path) is not None:
            raise ProtocolError(
                ErrorCode.EXISTS,
                f"{path} exists; to bring back an older version give --version (see `ferry history {path}`)",
            )
        last = await tx.conn.fetchrow(
            "SELECT file_id, to_seq FROM path_history WHERE namespace_id = $1 AND path = $2"
            " ORDER BY from_seq DESC LIMIT 1",
            tx.ns,
            path,
        )
        if last is None:
            raise ProtocolError(
                ErrorCode.NOT_FOUND,
                f"{path}: nothing was deleted there (or it was deleted longer ago than versions are kept)",
            )
        end = await tx.conn.fetchrow(
            "SELECT v.path, v.deleted FROM journal j JOIN versions v"
            " ON v.namespace_id = j.namespace_id AND v.version_id = j.version_id"
            " WHERE j.namespace_id = $1 AND j.seq = $2",
            tx.ns,
            last["to_seq"],
        )
        if not end["deleted"]:
            now = await _open_path(tx.conn, tx.ns, last["file_id"])
            where = f"it is now at {now}" if now else f"restore {end['path']} instead"
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"{path} was moved to {end['path']}, not deleted: {where}"
            )
        # the cut right before the change that deleted it (a folder's contents go first)
        start = await tx.conn.fetchval(
            "SELECT min(seq) FROM journal WHERE namespace_id = $1 AND committed_at ="
            " (SELECT committed_at FROM journal WHERE namespace_id = $1 AND seq = $2)",
            tx.ns,
            last["to_seq"],
        )
        return await self._rewind(tx, path, start - 1, None)

    async def _rewind(self, tx: _Tx, path: str, seq: int, at: datetime | None) -> Entry:
        conn, ns = tx.conn, tx.ns
        target = [_node(r) for r in await conn.fetch(
            f"SELECT {_NODE_COLS} FROM path_history ph"
            " JOIN versions v ON v.namespace_id = ph.namespace_id AND v.version_id = ph.version_id"
            f" WHERE ph.namespace_id = $1 AND {_UNDER.format(a='ph')} AND {_VALID_AT.format(s='$5')}",
            ns, *_range(path), seq,
        )]  # fmt: skip
        current = [_node(r) for r in await conn.fetch(
            f"SELECT {_NODE_COLS} FROM heads h"
            " JOIN versions v ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
            f" WHERE h.namespace_id = $1 AND {_UNDER.format(a='h')}",
            ns, *_range(path),
        )]  # fmt: skip
        then = next((n for n in target if n.path == path), None)
        now = next((n for n in current if n.path == path), None)
        if path != "/" and then is None:
            assert at is not None  # an undelete's cut always has the path
            await _existed(conn, ns, path, seq, at)
        if then and now and then.kind != now.kind:
            code = ErrorCode.IS_A_DIRECTORY if now.kind == "dir" else ErrorCode.NOT_A_DIRECTORY
            raise ProtocolError(
                code,
                f"{path} is a {_word(now.kind)} now but was a {_word(then.kind)} then; move it away first",
            )
        here = {n.file_id for n in current}
        others = [n.file_id for n in target if n.file_id not in here]
        elsewhere: set[int] = set()
        if others:
            rows = await conn.fetch(
                "SELECT file_id FROM path_history WHERE namespace_id = $1 AND file_id = ANY($2::bigint[])"
                " AND to_seq IS NULL",
                ns,
                others,
            )
            elsewhere = {r["file_id"] for r in rows}
        ops = plan(target, current, elsewhere)
        if ops and path != "/":
            await tx.ensure_folders(path)
        await _apply(tx, ops, current)
        if path == "/":
            return Entry("/", "dir", 0, 0)
        entry = await tx.head(path)
        assert entry is not None
        return entry


# --- queries ----------------------------------------------------------------------


async def _cut(conn: Any, ns: int, path: str, at_ns: int) -> tuple[int, datetime]:
    """The journal cut a time names, refusing times in the future, before the
    namespace existed, or whose versions retention may have pruned."""
    at = from_ns(at_ns)
    row = await conn.fetchrow(
        "SELECT clock_timestamp() AS now, created_at, pruned_before FROM namespaces WHERE namespace_id = $1",
        ns,
    )
    if at > row["now"]:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"{iso(at)} is in the future (the server's time is {iso(row['now'])})"
        )
    if at < row["created_at"]:
        raise ProtocolError(
            ErrorCode.NOT_FOUND,
            f"{path} did not exist at {iso(at)} (this folder tree was created at {iso(row['created_at'])})",
        )
    if row["pruned_before"] is not None and at < row["pruned_before"]:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"{iso(at)} is older than the kept history: versions from before {iso(row['pruned_before'])}"
            " were pruned by the retention period",
        )
    seq = await conn.fetchval(
        "SELECT seq FROM journal WHERE namespace_id = $1 AND committed_at <= $2"
        " ORDER BY committed_at DESC, seq DESC LIMIT 1",
        ns,
        at,
    )
    return int(seq or 0), at


async def _existed(conn: Any, ns: int, path: str, seq: int, at: datetime) -> str:
    """The kind of what stood at ``path`` at cut ``seq``; NOT_FOUND (saying
    when it first appeared) if nothing did."""
    kind = await conn.fetchval(
        "SELECT v.kind FROM path_history ph JOIN versions v"
        " ON v.namespace_id = ph.namespace_id AND v.version_id = ph.version_id"
        f" WHERE ph.namespace_id = $1 AND ph.path = $2 AND {_VALID_AT.format(s='$3')}",
        ns,
        path,
        seq,
    )
    if kind is not None:
        return str(kind)
    later = await conn.fetchval(
        "SELECT j.committed_at FROM path_history ph JOIN journal j"
        " ON j.namespace_id = ph.namespace_id AND j.seq = ph.from_seq"
        " WHERE ph.namespace_id = $1 AND ph.path = $2 AND ph.from_seq > $3 ORDER BY ph.from_seq LIMIT 1",
        ns,
        path,
        seq,
    )
    hint = f" (it first appears at {iso(later)})" if later else ""
    raise ProtocolError(ErrorCode.NOT_FOUND, f"{path} did not exist at {iso(at)}{hint}")


async def _file_at(conn: Any, ns: int, path: str) -> int | None:
    """The file at ``path`` now, else the last one that was there."""
    file_id = await conn.fetchval("SELECT file_id FROM heads WHERE namespace_id = $1 AND path = $2", ns, path)
    if file_id is None:
        file_id = await conn.fetchval(
            "SELECT file_id FROM path_history WHERE namespace_id = $1 AND path = $2 ORDER BY from_seq DESC LIMIT 1",
            ns,
            path,
        )
    return None if file_id is None else int(file_id)


async def _open_version(conn: Any, ns: int, file_id: int) -> int | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT version_id FROM path_history WHERE namespace_id = $1 AND file_id = $2 AND to_seq IS NULL",
        ns,
        file_id,
    )


async def _open_path(conn: Any, ns: int, file_id: int) -> str | None:
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT path FROM path_history WHERE namespace_id = $1 AND file_id = $2 AND to_seq IS NULL",
        ns,
        file_id,
    )


async def _node_now(conn: Any, ns: int, path: str) -> Node | None:
    row = await conn.fetchrow(
        f"SELECT {_NODE_COLS} FROM heads h JOIN versions v"
        " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
        " WHERE h.namespace_id = $1 AND h.path = $2",
        ns,
        path,
    )
    return _node(row) if row else None


# --- writing a plan -------------------------------------------------------------------


async def _apply(tx: _Tx, ops: list[Op], current: list[Node]) -> None:
    """Write ``ops`` in order as versions copied from their sources: the same
    rows ``_Tx.write`` writes one at a time (versions, journal, path_history,
    heads), here a few set-based statements for any count. namespace_blocks
    needs nothing: every source is a kept version of this namespace, so its
    blocks are listed there already (pruning, under the same lock, only drops
    blocks no kept version references)."""
    if not ops:
        return
    conn, ns = tx.conn, tx.ns
    ids = sorted(
        r[0] for r in await conn.fetch("SELECT nextval('ids') FROM generate_series(1, $1)", len(ops))
    )
    seqs = list(range(tx.seq + 1, tx.seq + len(ops) + 1))
    tx.seq += len(ops)
    files = [op.file_id if op.file_id is not None else vid for op, vid in zip(ops, ids, strict=True)]
    await conn.execute(
        "INSERT INTO versions (namespace_id, version_id, file_id, path, kind, deleted, size, mtime_ns,"
        " executable, content_hash, block_hashes, block_sizes, device_id, created_at, damaged)"
        " SELECT $1::bigint, x.version_id, x.file_id, x.path, s.kind, x.deleted, s.size, s.mtime_ns, s.executable,"
        " s.content_hash, s.block_hashes, s.block_sizes, $7, $8, s.damaged"
        " FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::boolean[])"
        " AS x(version_id, source, file_id, path, deleted)"
        " JOIN versions s ON s.namespace_id = $1 AND s.version_id = x.source",
        ns, ids, [op.source for op in ops], files, [op.path for op in ops], [op.deleted for op in ops],
        tx.who.device_id, tx.now,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO journal (namespace_id, seq, version_id, committed_at)"
        " SELECT $1::bigint, x.seq, x.version_id, $4 FROM unnest($2::bigint[], $3::bigint[]) AS x(seq, version_id)",
        ns,
        seqs,
        ids,
        tx.now,
    )
    history, closes = _history_rows(ops, ids, files, seqs)
    await conn.execute(
        "UPDATE path_history ph SET to_seq = c.to_seq FROM unnest($2::bigint[], $3::bigint[]) AS c(file_id, to_seq)"
        " WHERE ph.namespace_id = $1 AND ph.file_id = c.file_id AND ph.to_seq IS NULL",
        ns,
        list(closes),
        list(closes.values()),
    )
    if history:
        await conn.execute(
            "INSERT INTO path_history (namespace_id, path, from_seq, to_seq, file_id, version_id)"
            " SELECT $1::bigint, * FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])",
            ns, *(list(col) for col in zip(*history, strict=True)),
        )  # fmt: skip
    gone, heads = _head_changes(ops, ids, files, seqs, current)
    await conn.execute("DELETE FROM heads WHERE namespace_id = $1 AND path = ANY($2::text[])", ns, gone)
    if heads:
        await conn.execute(
            "INSERT INTO heads (namespace_id, path, parent, file_id, version_id, kind, seq)"
            " SELECT $1::bigint, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[])"
            " ON CONFLICT (namespace_id, path) DO UPDATE SET parent = EXCLUDED.parent, file_id = EXCLUDED.file_id,"
            " version_id = EXCLUDED.version_id, kind = EXCLUDED.kind, seq = EXCLUDED.seq",
            ns, *(list(col) for col in zip(*heads, strict=True)),
        )  # fmt: skip


def _history_rows(
    ops: list[Op], ids: list[int], files: list[int], seqs: list[int]
) -> tuple[list[list[Any]], dict[int, int]]:
    """path_history rows the writes open (closed again if the same file is
    written twice), and the seq at which each file's open row closes."""
    rows: list[list[Any]] = []  # path, from_seq, to_seq, file_id, version_id
    closes: dict[int, int] = {}
    open_row: dict[int, int] = {}
    for op, vid, fid, seq in zip(ops, ids, files, seqs, strict=True):
        closes.setdefault(fid, seq)
        i = open_row.pop(fid, None)
        if i is not None:
            rows[i][2] = seq
        if not op.deleted:
            open_row[fid] = len(rows)
            rows.append([op.path, seq, None, fid, vid])
    return rows, closes


def _head_changes(
    ops: list[Op], ids: list[int], files: list[int], seqs: list[int], current: list[Node]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Paths whose head row goes, and head rows to write, once all ops are applied."""
    at: dict[str, int] = {n.path: n.file_id for n in current}
    where = {fid: path for path, fid in at.items()}
    written: dict[str, tuple[Any, ...]] = {}
    for op, vid, fid, seq in zip(ops, ids, files, seqs, strict=True):
        old = where.pop(fid, None)
        if old is not None:
            del at[old]
            written.pop(old, None)
        if not op.deleted:
            at[op.path], where[fid] = fid, op.path
            written[op.path] = (op.path, _parent(op.path), fid, vid, op.kind, seq)
    return [n.path for n in current if n.path not in at], list(written.values())


def _word(kind: str) -> str:
    return "folder" if kind == "dir" else "file"


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


# --- the wire ---------------------------------------------------------------------------


async def handle(meta: MetaStore, who: Principal, msg: m.Message) -> m.Message:
    """Answer one version request (``server.ws`` routes them here)."""
    store = VersionStore(meta)
    match msg:
        case m.History(id=i, path=p, ns=ns, before=before, limit=limit):
            infos, nxt = await store.history(who, validate_path(p), ns, before, limit)
            return m.Versions(i, infos, nxt)
        case m.GetVersion(id=i, path=p, version=v, ns=ns):
            return m.VersionReply(i, await store.get_version(who, validate_path(p), ns, v))
        case m.ListDeleted(id=i, path=p, ns=ns, after=after, limit=limit):
            files, nxt_path = await store.deleted(who, validate_path(p), ns, after, limit)
            return m.DeletedListing(i, files, nxt_path)
        case m.Snapshot(id=i, path=p, at_ns=at_ns, ns=ns, after=after, limit=limit):
            seq, entries, nxt_path = await store.snapshot(who, validate_path(p), ns, at_ns, after, limit)
            return m.SnapshotListing(i, seq, entries, nxt_path)
        case m.Restore(id=i, key=key, path=p, version=v, ns=ns):
            seq, entry, changes = await store.restore(who, key, ns, validate_path(p), v)
            return m.Restored(i, seq, entry, changes)
        case m.Rewind(id=i, key=key, path=p, at_ns=at_ns, ns=ns):
            seq, entry, changes = await store.rewind(who, key, ns, validate_path(p), at_ns)
            return m.Restored(i, seq, entry, changes)
    raise TypeError(f"not a version request: {msg.TYPE}")
