"""``ferry share|unshare|invitations|accept|members|leave|link|quota``.

Paths are paths in the user's tree (shared folders appear at their mount
point); the server resolves them (see ``server.mounts``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from client.output import human_size, print_json
from client.transfer import Remote
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.framing import to_wire
from protocol.paths import validate_path

_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``7d`` → seconds (s, m, h, d, w; a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 7d, 12h or 30m)")
    return int(match[1]) * _SECONDS[match[2]]


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    share = sub.add_parser(
        "share", parents=[common], help="share a folder with a user (or change their role)"
    )
    share.add_argument("path")
    share.add_argument("--with", dest="user", required=True, metavar="USER")
    share.add_argument("--role", choices=("editor", "viewer"), default="editor")
    unshare = sub.add_parser("unshare", parents=[common], help="remove a user from a shared folder")
    unshare.add_argument("path")
    unshare.add_argument("--user", required=True)
    inv = sub.add_parser("invitations", parents=[common], help="folders others invited you to")
    inv.add_argument("--json", action="store_true")
    accept = sub.add_parser("accept", parents=[common], help="accept an invitation: mount the folder")
    accept.add_argument("invitation", type=int)
    accept.add_argument("--as", dest="path", metavar="PATH", help="where it appears (default: /NAME)")
    members = sub.add_parser("members", parents=[common], help="who can see a shared folder")
    members.add_argument("path")
    members.add_argument("--json", action="store_true")
    leave = sub.add_parser("leave", parents=[common], help="stop seeing a folder shared with you")
    leave.add_argument("path")
    quota = sub.add_parser("quota", parents=[common], help="your storage use and quota")
    quota.add_argument("--json", action="store_true")

    link = sub.add_parser("link", help="read-only links anyone can open").add_subparsers(
        dest="link_action", required=True, metavar="ACTION"
    )
    create = link.add_parser("create", parents=[common], help="make a link to a file or folder")
    create.add_argument("path")
    create.add_argument("--expires", type=parse_duration, metavar="DURATION", help="e.g. 7d, 12h, 30m")
    create.add_argument(
        "--password-stdin", action="store_true", help="protect it with a password read from stdin"
    )
    create.add_argument("--json", action="store_true")
    listing = link.add_parser("list", parents=[common], help="your links")
    listing.add_argument("--json", action="store_true")
    revoke = link.add_parser("revoke", parents=[common], help="make a link stop working")
    revoke.add_argument("link", help="the link's id (see `ferry link list`)")


async def _call(remote: Remote, make: Callable[[int], m.Message], expect: type[Any]) -> Any:
    return await remote.run(lambda c: c.call(make, expect))


async def _share(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    done: m.Shared = await _call(remote, lambda i: m.Share(i, path, args.user, args.role), m.Shared)
    print(f"{path}: shared with {args.user} as {args.role} (folder {done.ns})")
    return 0


async def _unshare(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    await _call(remote, lambda i: m.Unshare(i, path, args.user), m.Ok)
    print(f"{path}: {args.user} removed")
    return 0


async def _invitations(remote: Remote, args: argparse.Namespace) -> int:
    reply: m.Invitations = await _call(remote, lambda i: m.ListInvitations(i), m.Invitations)
    if args.json:
        print_json([{**to_wire(v), "invited_at": _iso(v.invited_ns)} for v in reply.invitations])
        return 0
    if not reply.invitations:
        print("no pending invitations")
    for v in reply.invitations:
        print(f"{v.invitation:>8}  {v.name}  from {v.owner} as {v.role}  ({_iso(v.invited_ns)})")
    return 0


async def _accept(remote: Remote, args: argparse.Namespace) -> int:
    path = None if args.path is None else validate_path(args.path)
    done: m.Shared = await _call(remote, lambda i: m.Accept(i, args.invitation, path), m.Shared)
    print(f"{done.path}: shared folder mounted ({done.role})")
    return 0


async def _members(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    reply: m.Members = await _call(remote, lambda i: m.ListMembers(i, path), m.Members)
    if args.json:
        print_json([to_wire(x) for x in reply.members])
        return 0
    for x in reply.members:
        print(f"{x.user:<20} {x.role}{'  (invited)' if x.pending else ''}")
    return 0


async def _leave(remote: Remote, args: argparse.Namespace) -> int:
    path = validate_path(args.path)
    await _call(remote, lambda i: m.Leave(i, path), m.Ok)
    print(f"{path}: left (your synced copies stay as plain local files)")
    return 0


async def _quota(remote: Remote, args: argparse.Namespace) -> int:
    reply: m.QuotaReply = await _call(remote, lambda i: m.GetQuota(i), m.QuotaReply)
    if args.json:
        print_json({"used": reply.used, "quota": reply.quota})
    elif reply.quota is None:
        print(f"{human_size(reply.used)} used, no quota")
    else:
        print(
            f"{human_size(reply.used)} of {human_size(reply.quota)} used ({human_size(max(reply.quota - reply.used, 0))} free)"
        )
    return 0


def _link_json(remote: Remote, info: m.LinkInfo) -> dict[str, Any]:
    return {**to_wire(info), "expires": _iso(info.expires_ns) if info.expires_ns else None,
            "created": _iso(info.created_ns)}  # fmt: skip


async def _link(remote: Remote, args: argparse.Namespace) -> int:
    if args.link_action == "create":
        path = validate_path(args.path)
        password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
        if args.password_stdin and not password:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "empty password on standard input")
        made: m.LinkCreated = await _call(
            remote, lambda i: m.CreateLink(i, path, args.expires, password), m.LinkCreated
        )
        url = f"{remote.creds.server.rstrip('/')}/s/{made.token}"
        if args.json:
            print_json({**_link_json(remote, made.info), "url": url})
        else:
            print(url)
        return 0
    if args.link_action == "list":
        reply: m.Links = await _call(remote, lambda i: m.ListLinks(i), m.Links)
        if args.json:
            print_json([_link_json(remote, x) for x in reply.links])
            return 0
        if not reply.links:
            print("no links")
        now = datetime.now(UTC).timestamp() * 1e9
        for x in reply.links:
            notes = ["password"] if x.password else []
            if x.expires_ns:
                notes.append(("expired " if x.expires_ns < now else "expires ") + _iso(x.expires_ns))
            print(f"{x.link:>8}  {x.path}  {', '.join(notes)}".rstrip())
        return 0
    text = args.link.strip()
    if not text.isdigit():
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{text!r} is not a link id (see `ferry link list`)")
    await _call(remote, lambda i: m.RevokeLink(i, int(text)), m.Ok)
    print(f"link {text} revoked")
    return 0


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


COMMANDS: dict[str, Callable[[Remote, argparse.Namespace], Any]] = {
    "share": _share, "unshare": _unshare, "invitations": _invitations, "accept": _accept,
    "members": _members, "leave": _leave, "quota": _quota, "link": _link,
}  # fmt: skip
