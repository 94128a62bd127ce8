"""``ferry history``, ``restore``, ``deleted``, ``snapshot`` and ``get --version``.

Times on the command line are ISO 8601 (``2026-11-24T10:15:00Z``; without a
zone, the local time of this machine); the output shows server times in UTC
with microseconds, so a time copied from ``ferry history`` names exactly the
state after that version was saved.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from client.output import human_size, print_json
from client.transfer import Remote
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import to_wire
from protocol.paths import validate_path

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> int:
    """An ISO 8601 time → nanoseconds since the epoch (argparse type)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (try 2026-11-24T10:15:00Z, or a time from `ferry history`)"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a time without a zone is this machine's local time
    ns = (when - EPOCH) // timedelta(microseconds=1) * 1000
    return max(-(2**63), min(ns, 2**63 - 1))  # beyond 2262 on the wire: the server says "in the future"


def iso(ns: int) -> str:
    when = EPOCH + timedelta(microseconds=(ns + 500) // 1000)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    history = sub.add_parser("history", parents=[common], help="every saved version of a file, newest first")
    history.add_argument("path")
    history.add_argument("--json", action="store_true", help="one JSON list of versions")

    restore = sub.add_parser(
        "restore",
        parents=[common],
        help="make an old version current, undelete, or put a folder back as it was at a time",
    )
    restore.add_argument("path")
    which = restore.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="the version to make current (see `ferry history`)")
    which.add_argument(
        "--at",
        type=parse_time,
        metavar="TIME",
        help="put PATH and everything under it back as it was at TIME",
    )
    restore.add_argument("--json", action="store_true", help="print the result as JSON")

    deleted = sub.add_parser(
        "deleted", parents=[common], help="deleted files and folders that can be restored"
    )
    deleted.add_argument("path", nargs="?", default="/")
    deleted.add_argument("--json", action="store_true")

    snapshot = sub.add_parser("snapshot", parents=[common], help="list a folder's tree as it was at a time")
    snapshot.add_argument("path", nargs="?", default="/")
    snapshot.add_argument("--at", type=parse_time, metavar="TIME", required=True)
    snapshot.add_argument("--json", action="store_true", help="one JSON list of entries, like `ls --json`")


async def fetchable(conn: Any, path: str, version: int | None) -> m.Entry:
    """The entry ``ferry get`` downloads: the current or a given version, never a damaged one."""
    reply = await conn.call(lambda i: m.GetVersion(i, path, version), m.VersionReply)
    info: m.VersionInfo = reply.info
    if info.damaged:
        raise ProtocolError(
            ErrorCode.BAD_ENTRY,
            f"{path}: version {info.entry.version} is damaged on the server (fsck found missing or corrupt"
            f" blocks, and no replica exists to repair it); restore another version (`ferry history {path}`)",
        )
    return info.entry


async def _pages(
    remote: Remote, make: Callable[[int, Any], m.Message], expect: type[Any], items: str
) -> list[Any]:
    async def fetch(conn: Any) -> list[Any]:
        out: list[Any] = []
        cursor: Any = None
        while True:
            page = await conn.call(lambda i, c=cursor: make(i, c), expect)
            out += getattr(page, items)
            if page.next is None:
                return out
            cursor = page.next

    return await remote.run(fetch)


def _entry_json(e: m.Entry) -> dict[str, Any]:
    body = {k: v for k, v in to_wire(e).items() if k != "blocks"}
    body["time"] = iso(e.committed_ns)
    return body


async def _history(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    infos: list[m.VersionInfo] = await _pages(
        remote, lambda i, before: m.History(i, path, before=before, limit=5000), m.Versions, "versions"
    )
    if args.json:
        print_json(
            [
                {**_entry_json(v.entry), "author": v.author, "current": v.current, "damaged": v.damaged}
                for v in infos
            ]
        )
        return 0
    for v in infos:
        e = v.entry
        notes = [
            n for n, on in (("current", v.current), ("deleted", e.deleted), ("damaged", v.damaged)) if on
        ]
        if e.path != path:
            notes.append(f"at {e.path}")
        size = "-" if e.kind == "dir" or e.deleted else human_size(e.size)
        print(
            f"{e.version:>10}  {iso(e.committed_ns)}  {size:>10}  {e.device or '-'}  {v.author or '-'}  {' '.join(notes)}".rstrip()
        )
    return 0


async def _restore(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    key = f"restore-{os.urandom(12).hex()}"  # the same key on every retry: applied once
    if args.at is not None:
        make: Callable[[int], m.Message] = lambda i: m.Rewind(i, key, path, args.at)  # noqa: E731
    else:
        make = lambda i: m.Restore(i, key, path, args.version)  # noqa: E731
    done: m.Restored = await remote.run(lambda c: c.call(make, m.Restored))
    if args.json:
        print_json({"path": path, "version": done.entry.version, "seq": done.seq, "changes": done.changes})
    elif args.at is not None:
        what = {None: "done", 0: "nothing to change", 1: "1 change"}.get(
            done.changes, f"{done.changes} changes"
        )
        print(f"{path}: back as it was at {iso(args.at)} ({what})")
    elif args.version is not None:
        print(f"{path}: version {args.version} restored as version {done.entry.version}")
    else:
        print(f"{path}: restored (version {done.entry.version})")
    return 0


async def _deleted(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    files: list[m.DeletedFile] = await _pages(
        remote, lambda i, after: m.ListDeleted(i, path, after=after, limit=5000), m.DeletedListing, "files"
    )
    if args.json:
        print_json(
            [
                {
                    **_entry_json(f.entry),
                    "deleted_at": iso(f.deleted_ns),
                    "deleted_ns": f.deleted_ns,
                    "deleted_by": f.device,
                    "author": f.author,
                }
                for f in files
            ]
        )
        return 0
    for f in files:
        e = f.entry
        size = "-" if e.kind == "dir" else human_size(e.size)
        name = e.path + ("/" if e.kind == "dir" else "")
        print(f"{iso(f.deleted_ns)}  {f.device or '-':<12}  {size:>10}  {name}")
    return 0


async def _snapshot(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    entries: list[m.Entry] = await _pages(
        remote,
        lambda i, after: m.Snapshot(i, path, args.at, after=after, limit=5000),
        m.SnapshotListing,
        "entries",
    )
    if args.json:
        print_json([_entry_json(e) for e in entries])
        return 0
    for e in entries:
        size = "-" if e.kind == "dir" else human_size(e.size)
        print(f"{size:>10}  {iso(e.committed_ns)}  {e.path}{'/' if e.kind == 'dir' else ''}")
    return 0


COMMANDS: dict[str, Callable[[Remote, argparse.Namespace], Any]] = {
    "history": _history, "restore": _restore, "deleted": _deleted, "snapshot": _snapshot,
}  # fmt: skip
