"""Version history at scale: a file with 10,000 versions, and a folder of
100,000 files with 1,000,000 journal entries. Times listing the history,
listing a snapshot at an old time, and rewinding 10,000 files.

    .venv/bin/python bench/versions.py [--repeat 3] [--work DIR]

Starts a real `ferry server` on a fresh database (the PostgreSQL at
127.0.0.1:5432 or $FERRY_TEST_DATABASE_URL, else an embedded one). The rows
are generated directly in SQL for speed, through the same schema the server
writes (versions, journal with commit times, path_history, heads,
namespace_blocks), as if each journal entry had been its own change a
millisecond after the previous one. Each figure is measured two ways:

- server: the server's own code (``server.versions.VersionStore``) called in
  this process on its database — the query and transaction cost;
- cli: the `ferry` command end to end (process start, WebSocket, JSON,
  output), beside `ferry ls` of a one-entry folder as the fixed cost of a
  command.

Prints one JSON line of figures and a table (median of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server import db
from server.metastore import MetaStore
from server.versions import VersionStore, iso, to_ns
from tests.support.servers import Device, FerryServer, admin_url, create_database, drop_database

FILES, EDITS, HOT = 100_000, 900_000, 10_000
PER_DIR = 10_000
BASE_ID = 1_000_000  # version ids of generated rows start above the user's own

GENERATE = f"""
CREATE TEMP TABLE gen AS
WITH steps AS (
    SELECT 1 AS seq, -1 AS f
    UNION ALL SELECT 1 + d, -2 - d FROM generate_series(1, 10) d
    UNION ALL SELECT 12 + i, i FROM generate_series(0, {FILES - 1}) i
    UNION ALL SELECT {FILES + 11} + e, ((e::bigint * 7919) % {FILES})::int FROM generate_series(1, {EDITS}) e
    UNION ALL SELECT {FILES + EDITS + 12}, {FILES}
    UNION ALL SELECT {FILES + EDITS + 12} + k, {FILES + 1} FROM generate_series(1, {HOT}) k
)
SELECT seq::bigint AS seq, f, {BASE_ID} + seq AS version_id,
       {BASE_ID} + min(seq) OVER (PARTITION BY f) AS file_id,
       lead(seq) OVER (PARTITION BY f ORDER BY seq) AS to_seq,
       CASE WHEN f = -1 THEN '/bench'
            WHEN f < -1 THEN '/bench/d' || lpad((-f - 3)::text, 2, '0')
            WHEN f < {FILES} THEN '/bench/d' || lpad((f / {PER_DIR})::text, 2, '0') || '/f' || lpad(f::text, 6, '0')
            WHEN f = {FILES} THEN '/history'
            ELSE '/history/hot.txt' END AS path,
       CASE WHEN f < 0 OR f = {FILES} THEN 'dir' ELSE 'file' END AS kind
FROM steps;
"""

INSERT = """
INSERT INTO versions (namespace_id, version_id, file_id, path, kind, size, mtime_ns, content_hash,
                      block_hashes, block_sizes, device_id, created_at)
SELECT $1, version_id, file_id, path, kind,
       CASE WHEN kind = 'file' THEN 1000 + seq % 5000 ELSE 0 END, seq * 1000000,
       CASE WHEN kind = 'file' THEN sha256(int8send(seq)) END,
       CASE WHEN kind = 'file' THEN sha256(int8send(-seq)) ELSE ''::bytea END,
       CASE WHEN kind = 'file' THEN ARRAY[1000 + seq % 5000] ELSE '{}'::int[] END,
       $2, $3::timestamptz + seq * interval '1 millisecond'
FROM gen;
INSERT INTO journal (namespace_id, seq, version_id, committed_at)
SELECT $1, seq, version_id, $3::timestamptz + seq * interval '1 millisecond' FROM gen;
INSERT INTO path_history (namespace_id, path, from_seq, to_seq, file_id, version_id)
SELECT $1, path, seq, to_seq, file_id, version_id FROM gen;
INSERT INTO heads (namespace_id, path, parent, file_id, version_id, kind, seq)
SELECT $1, path, CASE WHEN path = '/bench' OR path = '/history' THEN '/' ELSE regexp_replace(path, '/[^/]*$', '') END,
       file_id, version_id, kind, seq FROM gen WHERE to_seq IS NULL;
INSERT INTO namespace_blocks (namespace_id, hash)
SELECT $1, sha256(int8send(-seq)) FROM gen WHERE kind = 'file';
UPDATE namespaces SET head_seq = (SELECT max(seq) FROM gen), created_at = $3::timestamptz,
       last_commit_at = $3::timestamptz + (SELECT max(seq) FROM gen) * interval '1 millisecond'
WHERE namespace_id = $1;
"""


async def generate(url: str, ns: int, device_id: int) -> datetime:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        base = await conn.fetchval("SELECT date_trunc('second', now() - interval '7 days')")
        await conn.execute(GENERATE)
        async with conn.transaction():
            # our own integers and timestamp, formatted in: no parameter types to infer
            await conn.execute(
                INSERT.replace("$1", str(ns))
                .replace("$2", str(device_id))
                .replace("$3", f"'{base.isoformat()}'")
            )
        await conn.execute(f"SELECT setval('ids', {BASE_ID} + (SELECT max(seq) FROM gen) + 1)")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return base  # type: ignore[no-any-return]


def at(base: datetime, seq: int) -> int:
    """Server nanoseconds of generated entry ``seq`` (a cut right after it)."""
    return to_ns(base) + seq * 1_000_000


def timed_cli(dev: Device, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    r = dev.run(*args, timeout=600)
    elapsed = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"ferry {' '.join(args)} failed: {r.stderr}")
    return elapsed, r.stdout


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = await fn()
    return time.perf_counter() - start, out


async def server_side(url: str, token: str, base: datetime, repeat: int) -> dict[str, Any]:
    pool = await db.create_pool(url)
    try:
        meta = MetaStore(pool)
        store = VersionStore(meta)
        who = await meta.authenticate(token)
        old = at(base, 300_000)  # every file exists; 200,000 of the 900,000 edits done

        async def history() -> int:
            versions, nxt = await store.history(who, "/history/hot.txt", None, None, 5000)
            while nxt is not None:
                page, nxt = await store.history(who, "/history/hot.txt", None, nxt, 5000)
                versions += page
            return len(versions)

        async def snapshot(path: str, pages: bool) -> int:
            _, entries, nxt = await store.snapshot(who, path, None, old, None, 5000 if pages else 1000)
            count = len(entries)
            while pages and nxt is not None:
                _, entries, nxt = await store.snapshot(who, path, None, old, nxt, 5000)
                count += len(entries)
            return count

        out: dict[str, list[float]] = {
            k: [] for k in ("history", "snapshot_page", "snapshot_dir", "snapshot_all", "rewind")
        }
        for i in range(repeat):
            t, n = await timed(history)
            assert n == HOT, n
            out["history"].append(t)
            t, n = await timed(lambda: snapshot("/bench", False))
            out["snapshot_page"].append(t)
            t, n = await timed(lambda: snapshot("/bench/d09", True))
            assert n == PER_DIR, n
            out["snapshot_dir"].append(t)
            t, n = await timed(lambda: snapshot("/bench", True))
            assert n == FILES + 10, n
            out["snapshot_all"].append(t)
            folder = f"/bench/d{i:02d}"
            t, (_, _, changes) = await timed(
                lambda f=folder: store.rewind(who, uuid.uuid4().hex, None, f, old)
            )
            out["rewind"].append(t)
            out.setdefault("rewind_changes", []).append(changes)
        return out
    finally:
        await pool.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the database afterwards (prints its URL)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-versions-", dir=args.work))
    admin = admin_url(work)
    url = create_database(admin)
    server = FerryServer(work / "server", url, extra=["--gc-every", "0"]).start()
    try:
        server.admin("user", "add", "bench", "--password-stdin", stdin="pw\n")
        dev = Device(work / "home", server).login("bench", "pw")
        creds = json.loads((dev.home / "credentials.json").read_text())
        import asyncpg

        async def ids() -> tuple[int, int]:
            conn = await asyncpg.connect(url)
            try:
                row = await conn.fetchrow("SELECT root_ns FROM users WHERE name = 'bench'")
                return int(row["root_ns"]), int(creds["device_id"])
            finally:
                await conn.close()

        ns, device_id = asyncio.run(ids())
        started = time.perf_counter()
        base = asyncio.run(generate(url, ns, device_id))
        generated = time.perf_counter() - started
        print(f"generated {FILES + EDITS + HOT + 12:,} journal entries in {generated:.0f}s", file=sys.stderr)

        srv = asyncio.run(server_side(url, creds["token"], base, args.repeat))
        old = iso(base + timedelta(milliseconds=300_000))  # the cut the server-side runs use too
        cli: dict[str, list[float]] = {
            k: [] for k in ("noop", "history", "snapshot_dir", "snapshot_all", "rewind")
        }
        for i in range(args.repeat):
            cli["noop"].append(timed_cli(dev, "ls", "/history", "--json")[0])
            t, outp = timed_cli(dev, "history", "/history/hot.txt", "--json")
            assert len(json.loads(outp)) == HOT
            cli["history"].append(t)
            t, outp = timed_cli(dev, "snapshot", "/bench/d09", "--at", old, "--json")
            assert len(json.loads(outp)) == PER_DIR
            cli["snapshot_dir"].append(t)
            t, outp = timed_cli(dev, "snapshot", "/bench", "--at", old, "--json")
            assert len(json.loads(outp)) == FILES + 10
            cli["snapshot_all"].append(t)
            t, outp = timed_cli(dev, "restore", f"/bench/d{args.repeat + i:02d}", "--at", old, "--json")
            cli["rewind"].append(t)
            cli.setdefault("rewind_changes", []).append(json.loads(outp)["changes"])
        # the rewound folder is exactly the snapshot
        now = json.loads(timed_cli(dev, "ls", f"/bench/d{args.repeat:02d}", "--json")[1])
        then = json.loads(timed_cli(dev, "snapshot", f"/bench/d{args.repeat:02d}", "--at", old, "--json")[1])
        assert [(e["path"], e["content_hash"]) for e in now] == [(e["path"], e["content_hash"]) for e in then]

        med = {f"server_{k}": statistics.median(v) for k, v in srv.items()}
        med |= {f"cli_{k}": statistics.median(v) for k, v in cli.items()}
        figures = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "generate_seconds": round(generated, 1),
            **{k: round(v, 3) for k, v in med.items()},
        }
        print(json.dumps(figures))
        rows = [
            ("history of a file with 10,000 versions (all pages)", "history", "history"),
            ("snapshot at an old time, first page of 1,000", "snapshot_page", None),
            ("snapshot at an old time, all 100,010 entries", "snapshot_all", "snapshot_all"),
            ("snapshot at an old time, one folder of 10,000", "snapshot_dir", "snapshot_dir"),
            ("rewind a folder of 10,000 files (one change)", "rewind", "rewind"),
            ("`ferry ls` of one entry (fixed cost of a command)", None, "noop"),
        ]
        print(f"{'':52} {'server':>8} {'cli':>8}")
        for label, s, c in rows:
            sv = f"{med['server_' + s]:.3f}" if s else "-"
            cv = f"{med['cli_' + c]:.3f}" if c else "-"
            print(f"{label:52} {sv:>8} {cv:>8}")
        print(f"rewind changes: server {srv['rewind_changes']}, cli {cli['rewind_changes']}")
    finally:
        server.stop()
        if args.keep:
            print(f"database kept: {url}; files kept: {work}", file=sys.stderr)
        else:
            drop_database(admin, url)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
