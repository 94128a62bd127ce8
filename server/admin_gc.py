"""``ferry admin gc``, ``ferry admin fsck`` and ``ferry admin retention``.

They reach the database directly, like the other admin commands, and the
block store the running server recorded at start (``server_settings``), so
``--blocks`` / ``--s3-endpoint`` / retention flags are only needed to
override it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from typing import Any

import asyncpg
import orjson

from protocol.errors import ErrorCode, ProtocolError
from server import gc
from server.blockstore import BlockStore, BlockStoreError, open_block_store
from server.config import Settings, add_retention_flags, add_server_flags, parse_days


def add_commands(admin: Any) -> None:
    run = admin.add_parser("gc", help="prune old versions and remove blocks nothing references")
    run.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    run.add_argument("--json", action="store_true")
    add_retention_flags(run, default=False)
    _store_flags(run)
    check = admin.add_parser("fsck", help="read every block, check its hash, list damaged files and versions")
    check.add_argument("--repair", action="store_true", help="mark damaged versions (get refuses them)")
    check.add_argument("--json", action="store_true")
    _store_flags(check)
    keep = admin.add_parser("retention", help="show or set how long a user's old versions are kept")
    keep.add_argument("user")
    keep.add_argument("days", nargs="?", help="days (0 = forever), or `default` for the server's setting")
    add_server_flags(keep)
    for p in (run, check, keep):
        p.set_defaults(action=None)


def _store_flags(p: argparse.ArgumentParser) -> None:
    add_server_flags(p)
    p.add_argument("--blocks", default=os.environ.get("FERRY_BLOCKS"),
                   help="block store (default: the one the server was started with)")  # fmt: skip
    p.add_argument("--s3-endpoint", default=os.environ.get("FERRY_S3_ENDPOINT"))


async def _store(pool: asyncpg.Pool, args: argparse.Namespace, settings: Settings) -> BlockStore:
    recorded = await gc.recorded_settings(pool)
    spec = args.blocks or recorded.get("blocks") or settings.block_spec
    endpoint = args.s3_endpoint or recorded.get("s3_endpoint") or None
    # no cache: fsck must read what is really stored
    return open_block_store(spec, data_dir=settings.data_dir, s3_endpoint=endpoint, cache_bytes=0)


async def command(args: argparse.Namespace, pool: asyncpg.Pool, settings: Settings) -> int:
    """Run one of these admin commands; the exit code."""
    if args.what == "retention":
        return await _retention(pool, args)
    store = await _store(pool, args, settings)
    try:
        if args.what == "gc":
            return await _gc(pool, store, args)
        return await _fsck(pool, store, args)
    except BlockStoreError as e:
        raise ProtocolError(ErrorCode.UNAVAILABLE, str(e)) from None
    finally:
        await store.close()


async def _gc(pool: asyncpg.Pool, store: BlockStore, args: argparse.Namespace) -> int:
    recorded = await gc.recorded_settings(pool)
    days = args.keep_versions_days
    if days is None:
        days = int(recorded.get("keep_versions_days", "180"))
    grace = args.gc_grace if args.gc_grace is not None else float(recorded.get("gc_grace", "3600"))
    report = await gc.run_gc(pool, store, days, grace, args.dry_run)
    if args.json:
        _print(asdict(report))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    kept = "forever" if days == 0 else f"{days} days"
    print(
        f"versions kept {kept}: {'would prune' if args.dry_run else 'pruned'} {report.versions_pruned}"
        f" versions in {report.namespaces_pruned} namespaces; {verb} {report.blocks_removed} blocks"
        f" ({report.bytes_removed} bytes) from {getattr(store, 'url', store)}"
        + (
            f"; {report.blocks_failed} could not be deleted (retried next run)"
            if report.blocks_failed
            else ""
        )
    )
    return 0


async def _fsck(pool: asyncpg.Pool, store: BlockStore, args: argparse.Namespace) -> int:
    report = await gc.fsck(pool, store, args.repair)
    if args.json:
        _print({**asdict(report), "ok": report.ok})
        return 0 if report.ok else 1
    print(
        f"checked {report.blocks_checked} blocks in {report.store}: {len(report.missing)} missing,"
        f" {len(report.corrupt)} corrupt, {len(report.unrecorded)} referenced but never stored;"
        f" {report.orphans} stored blocks unknown to the database"
    )
    for d in report.damaged:
        now = " (current)" if d["current"] else ""
        print(
            f"damaged: {d['owner']} {d['path']} version {d['version_id']}{now}: {len(d['blocks'])} bad block(s)"
        )
    if report.repaired:
        print(
            f"repaired: {len(report.damaged)} versions marked damaged (no replica exists to re-fetch from;"
            f" `ferry get` refuses them, restore another version), {report.healed} healed"
        )
    elif not report.ok:
        print("run `ferry admin fsck --repair` to mark the damaged versions")
    return 0 if report.ok else 1


async def _retention(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    if args.days is not None:
        days = None if args.days == "default" else _days(args.days)
        await gc.set_retention(pool, args.user, days)
    days = await gc.retention_of(pool, args.user)
    default = (await gc.recorded_settings(pool)).get("keep_versions_days", "180")
    if days is None:
        print(f"{args.user}: old versions kept {_kept(int(default))} (the server's default)")
    else:
        print(f"{args.user}: old versions kept {_kept(days)} (server default: {_kept(int(default))})")
    return 0


def _days(text: str) -> int:
    try:
        return parse_days(text)
    except argparse.ArgumentTypeError as e:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(e)) from None


def _kept(days: int) -> str:
    return "forever" if days == 0 else f"{days} days"


def _print(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
