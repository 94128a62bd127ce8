"""A page of the journal costs the same however many versions the namespace
holds, also on a fresh server whose tables grew after its statements were
first planned. asyncpg keeps statements prepared, and PostgreSQL by default
switches a prepared statement to one cached generic plan after five runs,
made while the tables were nearly empty; in sync.py's b a page of changes
then took up to 1.2 s of the database's CPU (bench/README.md, session 12)."""

from __future__ import annotations

from typing import Any

import orjson

from server import db
from server.metastore import MetaStore

ROWS = 10_000  # journal entries written after the statement was first prepared
PAGE = 500


def _reads(plan: dict[str, Any], table: str) -> int:
    """Rows the plan's scans of ``table`` returned, over all their loops."""
    own = plan["Actual Rows"] * plan["Actual Loops"] if plan.get("Relation Name") == table else 0
    return int(own) + sum(_reads(child, table) for child in plan.get("Plans", []))


async def test_a_page_of_changes_reads_one_version_per_entry_after_the_tables_grew(database_url: str) -> None:
    pool = await db.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            for table in ("journal", "versions"):  # no ANALYZE: as on a new server mid-sync
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            await conn.execute(
                "INSERT INTO users (user_id, name, password_hash) VALUES (1, 'ann', 'x');"
                " INSERT INTO namespaces (namespace_id, owner_id) VALUES (1, 1);"
                " INSERT INTO versions (namespace_id, version_id, file_id, path, kind) VALUES (1, 1, 1, '/a', 'file');"
                " INSERT INTO journal (namespace_id, seq, version_id) VALUES (1, 1, 1)"
            )
            await conn.execute(f"PREPARE changes (bigint, bigint, integer) AS {MetaStore._CHANGES}")
            for _ in range(8):  # past the five runs after which a generic plan may be cached
                assert len(await conn.fetch(f"EXECUTE changes (1, 0, {PAGE})")) == 1
            await conn.execute(
                "INSERT INTO versions (namespace_id, version_id, file_id, path, kind)"
                f" SELECT 1, i, i, '/f' || i, 'file' FROM generate_series(2, {ROWS + 1}) i;"
                f" INSERT INTO journal (namespace_id, seq, version_id) SELECT 1, i, i FROM generate_series(2, {ROWS + 1}) i"
            )
            rows = await conn.fetch(f"EXECUTE changes (1, 100, {PAGE})")
            assert [r["seq"] for r in rows] == list(range(101, 101 + PAGE))
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE changes (1, 100, {PAGE})")
            plan = orjson.loads(raw)[0]["Plan"]
            # one version per entry of the page, by its primary key. Written as a plain
            # join, a plan cached while the tables were tiny read every version of the
            # namespace for every journal row (10,000 x 10,000), and a plan made for
            # the grown tables hashed all 10,000 versions for each page. (How the
            # journal itself is read depends on its statistics, which it has none of
            # here: without them a page may read all the entries after the cursor.)
            assert _reads(plan, "versions") <= PAGE, plan
    finally:
        await pool.close()
