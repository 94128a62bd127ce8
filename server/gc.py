"""Retention, garbage collection and fsck.

Theory of operation.

*Retention* prunes, per namespace and under its lock (so no change runs
meanwhile), every version that stopped being current more than N days ago
(``--keep-versions-days``, or the namespace's own setting; 0 keeps all): its
``path_history`` row ended at or before the *horizon*, the last journal entry
committed N days ago. A file's current version never ends, and a deleted
file's last state ends at its deletion, so it stays restorable for N days
after the deletion. Tombstones are kept (a device catching up must still
learn that a file went). Cuts older than the horizon would miss pruned
versions, so ``namespaces.pruned_before`` makes snapshots and rewinds refuse
them. Then ``namespace_blocks`` loses the blocks no remaining version of the
namespace references.

*GC* (mark and sweep) removes blocks that no namespace references and that
nobody uploaded within the grace period (``--gc-grace``): those may belong to
a commit still being prepared. Deleting races three writers, each closed by
the block's row lock:

- a commit locks the rows of the blocks it names (``FOR KEY SHARE``);
- an upload of a block that is already stored records itself while holding
  the row the same way (``MetaStore.claim_stored_block``); if the row is gone
  it stores the bytes again;
- GC locks each candidate row ``FOR UPDATE SKIP LOCKED`` (busy rows wait for
  the next run), re-checks references and uploads in a fresh statement (it
  sees every commit that finished before the lock), deletes the object, then
  the row, and commits. A commit that comes after finds the row gone and
  answers ``missing_blocks``, so the client sends the block again.

A GC killed between deleting objects and committing would leave rows whose
objects are gone, and the server would tell clients it holds those blocks.
So before deleting, GC marks the blocks in ``gc_doomed`` from a second
connection (committed at once), and unmarks them in the transaction that
deletes their rows. Readers check the mark after taking the row lock (so a
GC still running has finished): a marked block is not stored, and an upload
of it stores the bytes again and clears the mark. The next run first settles
marks a killed run left: rows whose object is gone are removed.

*fsck* reads every block the database lists from the store (bypassing the
cache), checks its SHA-256, and lists the versions that reference a missing
or corrupt block. ``--repair`` marks them damaged (``get`` then refuses them
with a clear error; no replica exists yet to re-fetch from), deletes broken
blocks so an upload of the same content stores it afresh, and clears the mark
of versions whose blocks are whole again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

from protocol import failpoints
from protocol.errors import ErrorCode, ProtocolError
from server.blockstore import BlockNotFound, BlockStore, BlockStoreError
from server.config import Settings

log = logging.getLogger("ferry.gc")
GC_LOCK = 7420  # advisory lock: one GC at a time across server processes and admin runs
BATCH = 500
PARALLEL = 8
# the blocks of versions, one 32-byte SHA-256 per row
_BLOCKS_OF = (
    "CROSS JOIN LATERAL generate_series(0, octet_length(v.block_hashes) / 32 - 1) AS g"
    " CROSS JOIN LATERAL substring(v.block_hashes FROM g * 32 + 1 FOR 32) AS b(hash)"
)


@dataclass
class GcReport:
    dry_run: bool
    keep_versions_days: int
    grace_seconds: float
    namespaces_pruned: int = 0
    versions_pruned: int = 0
    blocks_removed: int = 0
    bytes_removed: int = 0
    blocks_failed: int = 0  # the store would not delete them; retried next run


@dataclass
class FsckReport:
    store: str
    blocks_checked: int = 0
    missing: list[str] = field(default_factory=list)  # listed in the database, absent from the store
    corrupt: list[str] = field(default_factory=list)  # bytes do not hash to their name
    unrecorded: list[str] = field(default_factory=list)  # referenced by a version, unknown to the database
    orphans: int = 0  # in the store, unknown to the database (harmless)
    damaged: list[dict[str, Any]] = field(default_factory=list)
    repaired: bool = False
    healed: int = 0  # versions marked damaged before whose blocks are whole again

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.unrecorded or self.damaged)


# --- settings the server runs with ----------------------------------------------------


async def record_settings(pool: asyncpg.Pool, settings: Settings, store_url: str) -> None:
    values = {
        "blocks": store_url,
        "s3_endpoint": settings.s3_endpoint or "",
        "keep_versions_days": str(settings.keep_versions_days),
        "gc_grace": str(settings.gc_grace),
    }
    await pool.execute(
        "INSERT INTO server_settings (name, value) SELECT * FROM unnest($1::text[], $2::text[])"
        " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        list(values),
        list(values.values()),
    )


async def recorded_settings(pool: asyncpg.Pool) -> dict[str, str]:
    return {r["name"]: r["value"] for r in await pool.fetch("SELECT name, value FROM server_settings")}


# --- retention ---------------------------------------------------------------------------


async def set_retention(pool: asyncpg.Pool, user: str, days: int | None) -> None:
    done = await pool.execute(
        "UPDATE namespaces n SET keep_versions_days = $2 FROM users u"
        " WHERE u.name = $1 AND n.namespace_id = u.root_ns",
        user,
        days,
    )
    if done.endswith(" 0"):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no user named {user!r}")


async def retention_of(pool: asyncpg.Pool, user: str) -> int | None:
    row = await pool.fetchrow(
        "SELECT n.keep_versions_days FROM users u JOIN namespaces n ON n.namespace_id = u.root_ns WHERE u.name = $1",
        user,
    )
    if row is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no user named {user!r}")
    return row["keep_versions_days"]  # type: ignore[no-any-return]


async def prune_namespace(conn: Any, ns: int, days: int) -> int:
    """Prune versions of ``ns`` replaced more than ``days`` ago (inside the
    caller's transaction); how many were pruned."""
    horizon = await conn.fetchrow(
        "SELECT seq, committed_at FROM journal WHERE namespace_id = $1"
        " AND committed_at <= now() - make_interval(days => $2) ORDER BY committed_at DESC, seq DESC LIMIT 1",
        ns,
        days,
    )
    if horizon is None or not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM path_history WHERE namespace_id = $1 AND to_seq IS NOT NULL AND to_seq <= $2)",
        ns,
        horizon["seq"],
    ):
        return 0  # nothing to prune: do not wait for the namespace's lock
    # under the lock no change runs; what ended before the horizon stays ended
    await conn.execute("SELECT 1 FROM namespaces WHERE namespace_id = $1 FOR UPDATE", ns)
    gone = await conn.fetch(
        "DELETE FROM path_history WHERE namespace_id = $1 AND to_seq IS NOT NULL AND to_seq <= $2"
        " RETURNING version_id, from_seq",
        ns,
        horizon["seq"],
    )
    if not gone:
        return 0
    freed = await conn.fetch(
        "DELETE FROM versions v WHERE v.namespace_id = $1 AND v.version_id = ANY($2::bigint[])"
        " RETURNING v.block_hashes",
        ns,
        [r["version_id"] for r in gone],
    )
    await conn.execute(
        "DELETE FROM journal WHERE namespace_id = $1 AND seq = ANY($2::bigint[])",
        ns,
        [r["from_seq"] for r in gone],
    )
    candidates = list(
        {bytes(r["block_hashes"][i : i + 32]) for r in freed for i in range(0, len(r["block_hashes"]), 32)}
    )
    if candidates:
        # namespace_blocks: only what a remaining (non-tombstone) version still references
        await conn.execute(
            "DELETE FROM namespace_blocks nb WHERE nb.namespace_id = $1 AND nb.hash = ANY($2::bytea[])"
            f" AND nb.hash NOT IN (SELECT b.hash FROM versions v {_BLOCKS_OF}"
            " WHERE v.namespace_id = $1 AND NOT v.deleted AND b.hash = ANY($2::bytea[]))",
            ns,
            candidates,
        )
    await conn.execute(
        "UPDATE namespaces SET pruned_before = greatest(pruned_before, $2) WHERE namespace_id = $1",
        ns,
        horizon["committed_at"],
    )
    return len(gone)


async def _prune_all(conn: Any, default_days: int, report: GcReport, in_one_tx: bool) -> None:
    rows = await conn.fetch(
        "SELECT namespace_id, coalesce(keep_versions_days, $1) AS days FROM namespaces ORDER BY namespace_id",
        default_days,
    )
    for r in rows:
        if r["days"] == 0:
            continue
        if in_one_tx:
            pruned = await prune_namespace(conn, r["namespace_id"], r["days"])
        else:
            async with conn.transaction():
                pruned = await prune_namespace(conn, r["namespace_id"], r["days"])
        if pruned:
            report.namespaces_pruned += 1
            report.versions_pruned += pruned


# --- collection ----------------------------------------------------------------------------

_UNUSED = (
    "NOT EXISTS (SELECT 1 FROM namespace_blocks nb WHERE nb.hash = b.hash)"
    " AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.hash = b.hash"
    " AND u.created_at >= clock_timestamp() - make_interval(secs => {grace}))"
)


async def _candidates(conn: Any, grace: float) -> list[asyncpg.Record]:
    return await conn.fetch(  # type: ignore[no-any-return]
        "SELECT b.hash, b.size FROM blocks b WHERE b.created_at < clock_timestamp() - make_interval(secs => $1)"
        f" AND {_UNUSED.format(grace='$1')}",
        grace,
    )


async def _sweep(
    pool: asyncpg.Pool, conn: Any, store: BlockStore, hashes: list[bytes], grace: float, report: GcReport
) -> None:
    async with conn.transaction():
        locked = await conn.fetch(
            "SELECT hash FROM blocks WHERE hash = ANY($1::bytea[]) FOR UPDATE SKIP LOCKED", hashes
        )
        # a fresh statement (fresh snapshot): it sees every commit that finished
        # before we took the locks; any later one waits for us, then finds no row
        doomed = await conn.fetch(
            f"SELECT b.hash, b.size FROM blocks b WHERE b.hash = ANY($1::bytea[]) AND {_UNUSED.format(grace='$2')}",
            [r["hash"] for r in locked],
            grace,
        )
        # committed before any object goes (another connection: ours holds the rows)
        await pool.execute(
            "INSERT INTO gc_doomed (hash) SELECT unnest($1::bytea[]) ON CONFLICT DO NOTHING",
            [r["hash"] for r in doomed],
        )
        slots = asyncio.Semaphore(PARALLEL)

        async def delete(h: bytes) -> bool:
            async with slots:
                try:
                    await store.delete(h)
                    failpoints.hit("server.gc.delete")
                    return True
                except BlockStoreError as e:
                    log.warning("gc: cannot delete block %s: %s", h.hex(), e)
                    return False

        done = await asyncio.gather(*(delete(bytes(r["hash"])) for r in doomed))
        removed = [bytes(r["hash"]) for r, ok in zip(doomed, done, strict=True) if ok]
        await conn.execute("DELETE FROM uploads WHERE hash = ANY($1::bytea[])", removed)
        await conn.execute("DELETE FROM blocks WHERE hash = ANY($1::bytea[])", removed)
        await conn.execute("DELETE FROM gc_doomed WHERE hash = ANY($1::bytea[])", [r["hash"] for r in doomed])
    report.blocks_removed += len(removed)
    report.bytes_removed += sum(r["size"] for r, ok in zip(doomed, done, strict=True) if ok)
    report.blocks_failed += len(doomed) - len(removed)


@contextlib.asynccontextmanager
async def _exclusive(pool: asyncpg.Pool) -> AsyncIterator[Any]:
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", GC_LOCK):
            raise ProtocolError(
                ErrorCode.BUSY,
                "another GC is running (a server's background run or `ferry admin gc`); try again later",
            )
        try:
            yield conn
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", GC_LOCK)


async def run_gc(
    pool: asyncpg.Pool, store: BlockStore, keep_versions_days: int, grace: float, dry_run: bool = False
) -> GcReport:
    """Prune by retention, then remove unreferenced blocks. A dry run does
    the same work in one transaction and rolls it back, so its counts are exact."""
    report = GcReport(dry_run, keep_versions_days, grace)
    async with _exclusive(pool) as conn:
        if dry_run:
            tx = conn.transaction()
            await tx.start()
            try:
                await _prune_all(conn, keep_versions_days, report, in_one_tx=True)
                rows = await _candidates(conn, grace)
                report.blocks_removed, report.bytes_removed = len(rows), sum(r["size"] for r in rows)
            finally:
                await tx.rollback()
            return report
        await settle_interrupted(conn, store)
        await _prune_all(conn, keep_versions_days, report, in_one_tx=False)
        hashes = [bytes(r["hash"]) for r in await _candidates(conn, grace)]
        for i in range(0, len(hashes), BATCH):
            await _sweep(pool, conn, store, hashes[i : i + BATCH], grace, report)
    return report


async def settle_interrupted(conn: Any, store: BlockStore) -> None:
    """Settle the marks a killed GC left (the caller holds the GC lock, so no
    sweep is running): a block whose object is gone loses its rows; one whose
    object is still there (deleted before, or stored again since) keeps them."""
    marked = [bytes(r["hash"]) for r in await conn.fetch("SELECT hash FROM gc_doomed")]
    real = getattr(store, "inner", store)  # what is really stored, not a copy this process cached
    for i in range(0, len(marked), BATCH):
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT hash FROM blocks WHERE hash = ANY($1::bytea[]) FOR UPDATE", marked[i : i + BATCH]
            )
            gone = [bytes(r["hash"]) for r in rows if not await real.has(bytes(r["hash"]))]
            await conn.execute("DELETE FROM uploads WHERE hash = ANY($1::bytea[])", gone)
            await conn.execute("DELETE FROM blocks WHERE hash = ANY($1::bytea[])", gone)
            await conn.execute("DELETE FROM gc_doomed WHERE hash = ANY($1::bytea[])", marked[i : i + BATCH])
        if gone:
            log.warning("gc: %d block(s) an interrupted GC run deleted are forgotten", len(gone))


async def run_periodically(pool: asyncpg.Pool, store: BlockStore, settings: Settings) -> None:
    """The server's background task: prune and collect every ``gc_every`` seconds."""
    while True:
        await asyncio.sleep(settings.gc_every)
        try:
            report = await run_gc(pool, store, settings.keep_versions_days, settings.gc_grace)
        except ProtocolError as e:
            log.info("background gc skipped: %s", e.message)
            continue
        except Exception:
            log.exception("background gc failed; retrying in %ss", settings.gc_every)
            continue
        if report.versions_pruned or report.blocks_removed or report.blocks_failed:
            log.info("gc: %s", asdict(report))


# --- fsck ---------------------------------------------------------------------------------


async def _stored_hashes(pool: asyncpg.Pool) -> AsyncIterator[list[asyncpg.Record]]:
    last = b""
    while True:
        rows = await pool.fetch("SELECT hash FROM blocks WHERE hash > $1 ORDER BY hash LIMIT $2", last, BATCH)
        if not rows:
            return
        yield rows
        last = bytes(rows[-1]["hash"])


async def _check_block(store: BlockStore, h: bytes) -> str | None:
    """None if the block is whole, else "missing" or "corrupt"."""
    try:
        data = await store.get(h)
    except BlockNotFound:
        return "missing"
    digest = await asyncio.to_thread(lambda: hashlib.sha256(data).digest())
    return None if digest == h else "corrupt"


async def fsck(pool: asyncpg.Pool, store: BlockStore, repair: bool) -> FsckReport:
    report = FsckReport(str(getattr(store, "url", store)))
    slots = asyncio.Semaphore(PARALLEL)

    async def check(h: bytes) -> None:
        async with slots:
            problem = await _check_block(store, h)
        report.blocks_checked += 1
        if problem:
            getattr(report, problem).append(h.hex())

    async for rows in _stored_hashes(pool):
        await asyncio.gather(*(check(bytes(r["hash"])) for r in rows))
    unrecorded = await pool.fetch(
        f"SELECT DISTINCT b.hash FROM versions v {_BLOCKS_OF} WHERE NOT v.deleted"
        " AND NOT EXISTS (SELECT 1 FROM blocks k WHERE k.hash = b.hash)"
    )
    report.unrecorded = [bytes(r["hash"]).hex() for r in unrecorded]
    recorded = {bytes(r["hash"]) async for r in _flatten(_stored_hashes(pool))}
    async for h in store.iter_hashes():
        report.orphans += h not in recorded
    bad = [bytes.fromhex(h) for h in report.missing + report.corrupt + report.unrecorded]
    report.damaged = await _damaged_versions(pool, bad)
    if repair:
        await _repair(pool, store, report, bad)
    for hashes in (report.missing, report.corrupt, report.unrecorded):
        hashes.sort()
    return report


async def _flatten(pages: AsyncIterator[list[asyncpg.Record]]) -> AsyncIterator[asyncpg.Record]:
    async for page in pages:
        for r in page:
            yield r


async def _damaged_versions(pool: asyncpg.Pool, bad: Iterable[bytes]) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT u.name AS owner, v.namespace_id, v.path, v.version_id, v.file_id,"
        " EXISTS (SELECT 1 FROM path_history ph WHERE ph.namespace_id = v.namespace_id"
        " AND ph.version_id = v.version_id AND ph.to_seq IS NULL AND ph.file_id = v.file_id) AS current,"
        " array_agg(DISTINCT encode(b.hash, 'hex')) AS blocks"
        f" FROM versions v {_BLOCKS_OF}"
        " JOIN namespaces n ON n.namespace_id = v.namespace_id JOIN users u ON u.user_id = n.owner_id"
        " WHERE NOT v.deleted AND b.hash = ANY($1::bytea[])"
        " GROUP BY u.name, v.namespace_id, v.path, v.version_id, v.file_id ORDER BY v.namespace_id, v.path, v.version_id",
        list(bad),
    )
    return [{**dict(r), "blocks": sorted(r["blocks"])} for r in rows]


async def _repair(pool: asyncpg.Pool, store: BlockStore, report: FsckReport, bad: list[bytes]) -> None:
    for h in report.corrupt:
        await store.delete(bytes.fromhex(h))  # so the same content uploaded again is stored afresh
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM blocks WHERE hash = ANY($1::bytea[])", bad)
        keys = [(d["namespace_id"], d["version_id"]) for d in report.damaged]
        await conn.execute(
            "UPDATE versions v SET damaged = true FROM unnest($1::bigint[], $2::bigint[]) AS k(ns, id)"
            " WHERE v.namespace_id = k.ns AND v.version_id = k.id AND NOT v.damaged",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        healed = await conn.execute(
            "UPDATE versions v SET damaged = false WHERE v.damaged AND NOT EXISTS"
            " (SELECT 1 FROM unnest($1::bigint[], $2::bigint[]) AS k(ns, id)"
            " WHERE k.ns = v.namespace_id AND k.id = v.version_id)",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
    report.healed = int(healed.split()[-1])
    report.repaired = True
