"""The "which of these blocks may this user read" query (``MetaStore._READABLE``)
answers right, and costs one index probe per hash asked about however many
block rows the user's namespace holds, with or without planner statistics
(a fresh server's first sync runs before ANALYZE has seen its tables)."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import orjson
import pytest

from server.db import migrate
from server.metastore import MetaStore

ROWS = 10_000  # block rows of the asking user's namespace
ASKED = 500  # hashes asked about at once (an upload batch)


def _h(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest()


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Relation Name") in ("uploads", "namespace_blocks", "blocks") else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


@pytest.mark.parametrize("analysed", [False, True])
async def test_readable_answers_right_and_probes_once_per_hash(database_url: str, analysed: bool) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            for table in ("uploads", "namespace_blocks", "members", "blocks"):
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            await conn.execute(
                "INSERT INTO users (user_id, name, password_hash) VALUES (1, 'ann', 'x'), (2, 'bob', 'x');"
                " INSERT INTO namespaces (namespace_id, owner_id) VALUES (1, 1), (2, 2);"
                " INSERT INTO members (namespace_id, user_id, role, mount_path)"
                " VALUES (1, 1, 'owner', '/'), (2, 2, 'owner', '/')"
            )
            # ann: blocks 0..ROWS-1 in her namespace, the first half also her uploads;
            # bob: blocks ROWS..2*ROWS-1, which ann may not read
            mine, theirs = [_h(i) for i in range(ROWS)], [_h(ROWS + i) for i in range(ROWS)]
            await conn.execute(
                "INSERT INTO namespace_blocks (namespace_id, hash) SELECT 1, unnest($1::bytea[])", mine
            )
            await conn.execute(
                "INSERT INTO uploads (user_id, hash) SELECT 1, unnest($1::bytea[])", mine[: ROWS // 2]
            )
            await conn.execute(
                "INSERT INTO namespace_blocks (namespace_id, hash) SELECT 2, unnest($1::bytea[])", theirs
            )
            await conn.execute("INSERT INTO uploads (user_id, hash) SELECT 2, unnest($1::bytea[])", theirs)
            await conn.execute(
                "INSERT INTO blocks (hash, size) SELECT unnest($1::bytea[]), 4096", mine + theirs
            )
            if analysed:
                await conn.execute("ANALYZE uploads, namespace_blocks, members, blocks")
            # asked: uploaded by ann, only in her namespace, bob's, and unknown
            asked = mine[:100] + mine[-200:] + theirs[:150] + [_h(3 * ROWS + i) for i in range(50)]
            assert len(asked) == ASKED

            rows = await conn.fetch(MetaStore._READABLE, 1, asked)
            assert {bytes(r["hash"]) for r in rows} == set(mine[:100] + mine[-200:])

            # as asked alone, and as the stored blocks among them (missing blocks; a commit's check)
            for query in (MetaStore._READABLE, MetaStore._readable_stored(),
                          MetaStore._readable_stored("FOR KEY SHARE")):  # fmt: skip
                async with conn.transaction():
                    raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", 1, asked)
                plan = orjson.loads(raw)[0]["Plan"]
                scans = _scans(plan)
                assert scans, plan
                for node in scans:  # a probe finds at most one row per hash; a scan would read thousands
                    assert node["Actual Rows"] <= 1, node
                    assert node["Actual Loops"] <= ASKED, node
            stored = await conn.fetch(MetaStore._readable_stored(), 1, asked)
            assert {bytes(r["hash"]) for r in stored} == set(mine[:100] + mine[-200:])
    finally:
        await pool.close()
