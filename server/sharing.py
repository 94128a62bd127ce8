"""Shared folders, invitations, links and quotas.

Terms:

shared folder
    A namespace of kind ``shared`` with its own journal. ``ferry share /Team``
    turns the folder ``/Team`` of the owner's root namespace into one: in one
    transaction its entries are copied (as new files) into the new namespace
    and deleted from the root, and the owner's ``members`` row mounts the new
    namespace at ``/Team``. From then on nothing can be written at or under
    ``/Team`` in the root namespace (``_Tx.check_path``).
mount
    Where a member sees a shared folder in their tree: ``members.mount_path``.
    Paths in requests here are paths in the asking user's tree; ``locate``
    finds the namespace by the longest mount that contains the path, among the
    asking user's own memberships only, so nobody can name (or learn about) a
    folder they are not a member of.
invitation
    A pending membership: the invitee sees it (``ferry invitations``) and
    accepting it makes a ``members`` row mounted where they choose.

Whenever a user's memberships change, ``NOTIFY ferry_members '<user id>'``
tells every server process, whose sessions of that user then re-read their
namespaces (and stop pushing changes of one they lost). Access itself is
checked against ``members`` on every request, so it ends at the revocation's
commit, whatever the sessions do.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import ancestors, is_within, name_of, validate_path
from server import auth
from server.metastore import MEMBERS_CHANNEL, MetaStore, Principal, _NewVersion, _ns, _Tx, usage

MAX_LINK_SECONDS = 10 * 365 * 86400
LINK_PREFIX = "fl_"


async def handle(meta: MetaStore, who: Principal, msg: m.Message) -> m.Message:
    async with meta.pool.acquire() as conn:
        match msg:
            case m.Share(id=i, path=p, user=user, role=role):
                async with conn.transaction():
                    ns = await share(conn, who, validate_path(p), user, role)
                return m.Shared(i, ns, validate_path(p), "owner")
            case m.Unshare(id=i, path=p, user=user):
                async with conn.transaction():
                    await unshare(conn, who, validate_path(p), user)
                return m.Ok(i)
            case m.ListInvitations(id=i):
                return m.Invitations(i, await invitations(conn, who))
            case m.Accept(id=i, invitation=inv, path=p):
                async with conn.transaction():
                    return await accept(conn, who, i, inv, None if p is None else validate_path(p))
            case m.Leave(id=i, path=p):
                async with conn.transaction():
                    await leave(conn, who, validate_path(p))
                return m.Ok(i)
            case m.ListMembers(id=i, path=p):
                ns, members = await list_members(conn, who, validate_path(p))
                return m.Members(i, ns, members)
            case m.CreateLink(id=i, path=p, expires_s=expires, password=password):
                token, info = await create_link(conn, who, validate_path(p), expires, password)
                return m.LinkCreated(i, token, info)
            case m.ListLinks(id=i):
                return m.Links(i, await list_links(conn, who))
            case m.RevokeLink(id=i, link=link):
                await revoke_link(conn, who, link)
                return m.Ok(i)
            case m.GetQuota(id=i):
                quota = await conn.fetchval("SELECT quota_bytes FROM users WHERE user_id = $1", who.user_id)
                return m.QuotaReply(i, await usage(conn, who.user_id), quota)
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"{msg.TYPE} is not a sharing request")


# --- where a path lives ---------------------------------------------------------------


async def locate(conn: Any, who: Principal, path: str) -> tuple[int, str, str, str]:
    """The namespace ``path`` of ``who``'s tree lives in: (namespace, path inside
    it, ``who``'s role there, where it is mounted)."""
    rows = await conn.fetch(
        "SELECT namespace_id, mount_path, role FROM members WHERE user_id = $1", who.user_id
    )
    best = max((r for r in rows if is_within(path, r["mount_path"])), key=lambda r: len(r["mount_path"]))
    mount = best["mount_path"]
    inner = "/" if path == mount else path[len(mount.rstrip("/")) :]
    return best["namespace_id"], inner, best["role"], mount


async def _shared_folder(conn: Any, who: Principal, path: str) -> tuple[int, str]:
    """The shared folder mounted exactly at ``path`` for ``who``, and their role."""
    ns, inner, role, mount = await locate(conn, who, path)
    if ns == who.root_ns:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"{path} is not a shared folder of yours")
    if inner != "/":
        raise ProtocolError(ErrorCode.BAD_PATH, f"{path} is inside the shared folder {mount}; name {mount}")
    return ns, role


def _owner_only(role: str, path: str) -> None:
    if role != "owner":
        raise ProtocolError(ErrorCode.FORBIDDEN, f"only the owner of {path} can manage its members and links")


async def _user_id(conn: Any, name: str) -> int:
    user_id = await conn.fetchval("SELECT user_id FROM users WHERE name = $1", name)
    if user_id is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no user named {name!r}")
    return int(user_id)


async def _notify(conn: Any, *user_ids: int) -> None:
    for user_id in set(user_ids):
        await conn.execute("SELECT pg_notify($1, $2)", MEMBERS_CHANNEL, str(user_id))


# --- members ----------------------------------------------------------------------------


async def share(conn: Any, who: Principal, path: str, user: str, role: str) -> int:
    """Invite ``user`` (or change their role); make ``path`` a shared folder first if needed."""
    if role not in ("editor", "viewer"):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the role must be editor or viewer")
    target = await _user_id(conn, user)
    if target == who.user_id:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "you cannot share a folder with yourself")
    ns, inner, my_role, mount = await locate(conn, who, path)
    if ns == who.root_ns:
        ns = await _make_shared(conn, who, path)
    elif inner != "/":
        raise ProtocolError(
            ErrorCode.BAD_PATH, f"{path} is inside the shared folder {mount}; share {mount} itself"
        )
    else:
        _owner_only(my_role, path)
    current = await conn.fetchval(
        "SELECT role FROM members WHERE namespace_id = $1 AND user_id = $2", ns, target
    )
    if current == "owner":
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{user} owns {path}")
    if current is not None:
        await conn.execute(
            "UPDATE members SET role = $3 WHERE namespace_id = $1 AND user_id = $2", ns, target, role
        )
        await _notify(conn, target)
    else:
        await conn.execute(
            "INSERT INTO invitations (namespace_id, user_id, role, invited_by) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (namespace_id, user_id) DO UPDATE SET role = EXCLUDED.role",
            ns,
            target,
            role,
            who.user_id,
        )
    return ns


async def _make_shared(conn: Any, who: Principal, path: str) -> int:
    """Move the folder ``path`` of ``who``'s root namespace into a new shared
    namespace mounted at ``path`` (one transaction: both namespaces locked)."""
    if path == "/":
        raise ProtocolError(ErrorCode.BAD_PATH, "share a folder, not your whole tree")
    root = await _Tx.begin(conn, who, who.root_ns)
    head = await root.head(path)
    if head is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such folder")
    if head.kind != "dir":
        raise ProtocolError(
            ErrorCode.NOT_A_DIRECTORY, f"{path} is a file: share a folder, or make a link to the file"
        )
    inside = [mount for mount in root.mounts if is_within(mount, path)]
    if inside:
        raise ProtocolError(ErrorCode.BAD_PATH, f"{path} contains the shared folder {inside[0]}")
    ns = await conn.fetchval(
        "INSERT INTO namespaces (owner_id, kind, name) VALUES ($1, 'shared', $2) RETURNING namespace_id",
        who.user_id,
        name_of(path),
    )
    shared = await _Tx.begin(conn, who, ns)
    children = await root.subtree(path)
    await shared.write_many(
        [
            _NewVersion(
                None,
                c.path[len(path) :],
                c.kind,
                c.size,
                c.mtime_ns,
                c.executable,
                c.content_hash,
                [b.hash for b in c.blocks or []],
                [b.size for b in c.blocks or []],
            )
            for c in children
        ]
    )
    for child in reversed(children):  # deepest first, then the folder itself
        await root.write_from(child, path=child.path, deleted=True)
    await root.write_from(head, path=path, deleted=True)
    await conn.execute(
        "INSERT INTO members (namespace_id, user_id, role, mount_path) VALUES ($1, $2, 'owner', $3)",
        ns,
        who.user_id,
        path,
    )
    await shared.finish()
    await root.finish()
    await _notify(conn, who.user_id)
    return int(ns)


async def invitations(conn: Any, who: Principal) -> list[m.Invitation]:
    rows = await conn.fetch(
        "SELECT i.namespace_id, n.name, u.name AS owner, i.role, i.created_at FROM invitations i"
        " JOIN namespaces n USING (namespace_id) JOIN users u ON u.user_id = n.owner_id"
        " WHERE i.user_id = $1 ORDER BY i.created_at",
        who.user_id,
    )
    return [
        m.Invitation(r["namespace_id"], r["name"], r["owner"], r["role"], _ns(r["created_at"])) for r in rows
    ]


async def accept(conn: Any, who: Principal, req_id: int, ns: int, path: str | None) -> m.Shared:
    role = await conn.fetchval(
        "DELETE FROM invitations WHERE namespace_id = $1 AND user_id = $2 RETURNING role", ns, who.user_id
    )
    if role is None:
        member = await conn.fetchrow(
            "SELECT role, mount_path FROM members WHERE namespace_id = $1 AND user_id = $2", ns, who.user_id
        )
        if member is not None and path in (None, member["mount_path"]):  # a retried accept
            return m.Shared(req_id, ns, member["mount_path"], member["role"])
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no invitation {ns} for you (see `ferry invitations`)")
    name = await conn.fetchval("SELECT name FROM namespaces WHERE namespace_id = $1", ns)
    mount = path or validate_path("/" + name)
    if mount == "/":
        raise ProtocolError(ErrorCode.BAD_PATH, "a shared folder cannot be mounted at the root")
    root = await _Tx.begin(conn, who, who.root_ns)
    for other in root.mounts:
        if is_within(mount, other) or is_within(other, mount):
            raise ProtocolError(
                ErrorCode.EXISTS, f"{mount} overlaps the shared folder {other}; accept it with --as PATH"
            )
    if await root.head(mount) is not None:
        raise ProtocolError(
            ErrorCode.EXISTS, f"{mount} already exists in your tree; accept it with --as PATH"
        )
    if ancestors(mount):
        await root.ensure_folders(mount)  # a file in the way is an error
        await root.finish()
    await conn.execute(
        "INSERT INTO members (namespace_id, user_id, role, mount_path) VALUES ($1, $2, $3, $4)",
        ns,
        who.user_id,
        role,
        mount,
    )
    await _notify(conn, who.user_id)
    return m.Shared(req_id, ns, mount, role)


async def leave(conn: Any, who: Principal, path: str) -> None:
    ns, role = await _shared_folder(conn, who, path)
    if role == "owner":
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"you own {path}: remove its members with `ferry unshare` instead"
        )
    await conn.execute("DELETE FROM members WHERE namespace_id = $1 AND user_id = $2", ns, who.user_id)
    await _notify(conn, who.user_id)


async def unshare(conn: Any, who: Principal, path: str, user: str) -> None:
    ns, role = await _shared_folder(conn, who, path)
    _owner_only(role, path)
    target = await _user_id(conn, user)
    if target == who.user_id:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"you own {path}; you cannot remove yourself")
    removed = await conn.fetchval(
        "WITH a AS (DELETE FROM members WHERE namespace_id = $1 AND user_id = $2 RETURNING 1),"
        " b AS (DELETE FROM invitations WHERE namespace_id = $1 AND user_id = $2 RETURNING 1)"
        " SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b)",
        ns,
        target,
    )
    if not removed:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"{user} is not a member of {path}")
    await _notify(conn, target)


async def list_members(conn: Any, who: Principal, path: str) -> tuple[int, list[m.Member]]:
    ns, _ = await _shared_folder(conn, who, path)
    rows = await conn.fetch(
        "SELECT u.name, x.role, x.pending FROM ("
        " SELECT user_id, role, false AS pending FROM members WHERE namespace_id = $1"
        " UNION ALL SELECT user_id, role, true FROM invitations WHERE namespace_id = $1) x"
        " JOIN users u USING (user_id)"
        " ORDER BY x.role = 'owner' DESC, x.pending, u.name",
        ns,
    )
    return ns, [m.Member(r["name"], r["role"], r["pending"]) for r in rows]


# --- links -------------------------------------------------------------------------------


def link_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_link(
    conn: Any, who: Principal, path: str, expires_s: int | None, password: str | None
) -> tuple[str, m.LinkInfo]:
    if path == "/":
        raise ProtocolError(ErrorCode.BAD_PATH, "link a file or a folder, not your whole tree")
    if expires_s is not None and not 0 < expires_s <= MAX_LINK_SECONDS:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a link expires between 1 second and 10 years from now")
    if password is not None and not password:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "an empty password protects nothing")
    ns, inner, role, mount = await locate(conn, who, path)
    _owner_only(role, mount)
    if inner != "/" and not await conn.fetchval(
        "SELECT 1 FROM heads WHERE namespace_id = $1 AND path = $2", ns, inner
    ):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"{path}: no such file or folder")
    token = LINK_PREFIX + secrets.token_urlsafe(24)  # 192 random bits
    hashed = None if password is None else await auth.hash_password(password)
    row = await conn.fetchrow(
        "INSERT INTO links (namespace_id, token_hash, path, created_by, expires_at, password_hash)"
        " VALUES ($1, $2, $3, $4, now() + $5::interval, $6) RETURNING link_id, created_at, expires_at",
        ns,
        link_digest(token),
        inner,
        who.user_id,
        None if expires_s is None else timedelta(seconds=expires_s),
        hashed,
    )
    expires = row["expires_at"]
    info = m.LinkInfo(
        row["link_id"], path, _ns(expires) if expires else None, hashed is not None, _ns(row["created_at"])
    )
    return token, info


async def list_links(conn: Any, who: Principal) -> list[m.LinkInfo]:
    """Live links on folders ``who`` owns (expired ones too, until revoked)."""
    rows = await conn.fetch(
        "SELECT l.link_id, l.path, mb.mount_path, l.expires_at, l.password_hash IS NOT NULL AS password,"
        " l.created_at FROM links l JOIN members mb ON mb.namespace_id = l.namespace_id AND mb.user_id = $1"
        " WHERE mb.role = 'owner' AND l.revoked_at IS NULL ORDER BY l.link_id",
        who.user_id,
    )
    return [
        m.LinkInfo(
            r["link_id"],
            _join(r["mount_path"], r["path"]),
            _ns(r["expires_at"]) if r["expires_at"] else None,
            r["password"],
            _ns(r["created_at"]),
        )
        for r in rows
    ]


def _join(mount: str, inner: str) -> str:
    if inner == "/":
        return mount
    return inner if mount == "/" else mount + inner


async def revoke_link(conn: Any, who: Principal, link: int) -> None:
    done = await conn.execute(
        "UPDATE links l SET revoked_at = now() FROM members mb WHERE l.link_id = $1 AND l.revoked_at IS NULL"
        " AND mb.namespace_id = l.namespace_id AND mb.user_id = $2 AND mb.role = 'owner'",
        link,
        who.user_id,
    )
    if done.endswith(" 0"):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no link {link} of yours (see `ferry link list`)")


# --- quotas --------------------------------------------------------------------------------


async def set_quota(meta: MetaStore, user: str, quota: int | None) -> None:
    done = await meta.pool.execute("UPDATE users SET quota_bytes = $2 WHERE name = $1", user, quota)
    if done.endswith(" 0"):
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no user named {user!r}")
