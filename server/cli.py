"""``ferry server`` and ``ferry admin`` (run as ``python -m server ...``).

The admin commands talk to the same database as the server (same
``--data-dir`` / ``--database-url``), so they work while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import orjson

from protocol.errors import ErrorCode, ProtocolError
from server import admin_gc, db, sharing
from server.config import Settings, add_serve_flags, add_server_flags, settings_from
from server.metastore import MetaStore


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry", description="Ferry server and administration")
    sub = p.add_subparsers(dest="command", required=True)
    add_serve_flags(sub.add_parser("server", help="run the sync server"))
    admin = sub.add_parser("admin", help="manage users and devices").add_subparsers(
        dest="what", required=True
    )
    user = admin.add_parser("user", help="users").add_subparsers(dest="action", required=True)
    for action in ("add", "passwd"):
        a = user.add_parser(action, help=f"{action} a user (password read from standard input)")
        a.add_argument("name")
        a.add_argument(
            "--password-stdin", action="store_true", required=True, help="read the password from stdin"
        )
        add_server_flags(a)
    add_server_flags(user.add_parser("list", help="list users"))
    device = admin.add_parser("device", help="devices").add_subparsers(dest="action", required=True)
    d_list = device.add_parser("list", help="list devices")
    d_list.add_argument("user", nargs="?")
    add_server_flags(d_list)
    d_rev = device.add_parser("revoke", help="revoke a device's token (its live connections close)")
    d_rev.add_argument("device_id", type=int)
    add_server_flags(d_rev)
    quota = admin.add_parser("quota", help="set a user's storage quota (bytes of latest versions they own)")
    quota.add_argument("name")
    quota.add_argument("size", type=parse_size, help="e.g. 50GiB, 500MB, 1048576, or 'none' for no limit")
    add_server_flags(quota)
    admin_gc.add_commands(admin)
    return p


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_size(text: str) -> int | None:
    """``50GiB`` → bytes; ``none`` → None (no limit)."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    number = text.strip().rstrip("bBiIkKmMgGtT ")
    unit = text.strip()[len(number) :].strip().upper()
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 50GiB)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a quota cannot be negative")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings_from(args)
    if args.command == "server":
        from server.serve import serve

        return serve(settings)
    try:
        return asyncio.run(_admin(args, settings))
    except (ProtocolError, db.DatabaseUnavailable) as e:
        print(f"ferry: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1


def _read_password() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "empty password on standard input")
    return password


async def _admin(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(level=logging.WARNING)
    url, started = _database(settings)
    try:
        pool = await db.create_pool(url, min_size=1, max_size=2)
        meta = MetaStore(pool)
        try:
            match (args.what, getattr(args, "action", None)):
                case ("gc" | "fsck" | "retention", _):
                    return await admin_gc.command(args, pool, settings)
                case ("user", "add"):
                    await meta.add_user(args.name, _read_password())
                    print(f"user {args.name} added")
                case ("user", "passwd"):
                    await meta.set_password(args.name, _read_password())
                    print(f"password of {args.name} changed")
                case ("user", "list"):
                    for u in await meta.list_users():
                        print(orjson.dumps(u).decode())
                case ("device", "list"):
                    for d in await meta.list_devices(args.user):
                        print(orjson.dumps(d).decode())
                case ("quota", _):
                    await sharing.set_quota(meta, args.name, args.size)
                    limit = "no limit" if args.size is None else f"{args.size} bytes"
                    print(f"quota of {args.name}: {limit}")
                case ("device", "revoke"):
                    await meta.revoke_device(args.device_id)
                    print(f"device {args.device_id} revoked")
        finally:
            await pool.close()
    finally:
        if started:
            db.stop_embedded(settings.data_dir)
    return 0


def _database(settings: Settings) -> tuple[str, bool]:
    """The database URL, and whether we started the embedded one (to stop it after)."""
    if settings.database_url:
        return settings.database_url, False
    running = (Path(settings.data_dir) / "pg" / "postmaster.pid").exists()
    return db.embedded_database_url(settings.data_dir), not running
