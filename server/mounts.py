"""Paths in a user's whole tree: requests without ``ns`` reach mounted shared folders.

A request that names no namespace (``ns`` None) speaks of the user's tree as
they see it: their root namespace with each shared folder mounted at its
``members.mount_path``. Before such a request runs, ``route`` finds the
namespace its path lives in (longest mount that contains it, among the
user's own memberships: nobody can reach a folder they are not a member
of) and rewrites it to that namespace and the path inside it; ``outward``
rewrites the paths in the reply back into the user's tree. A move between
two namespaces becomes :meth:`MetaStore.move_across` (copy + delete).

Requests that name a namespace, and the journal (``list_changes``), are not
routed: a syncing client works per namespace.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import is_within, parent_of, validate_path
from server.metastore import MetaStore, Principal

_ONE_PATH = (m.Stat, m.ListFolder, m.Commit, m.Mkdir, m.Delete, m.History, m.GetVersion, m.ListDeleted,
             m.Snapshot, m.Restore, m.Rewind)  # fmt: skip


class Mounts:
    """The user's mounts, read once per request (so a revocation counts at once)."""

    def __init__(self, rows: list[tuple[int, str]], root_ns: int) -> None:
        self.rows = sorted(rows, key=lambda r: -len(r[1]))  # longest mount first
        self.root_ns = root_ns

    @classmethod
    async def of(cls, meta: MetaStore, who: Principal) -> Mounts:
        rows = await meta.pool.fetch(
            "SELECT namespace_id, mount_path FROM members WHERE user_id = $1 AND namespace_id <> $2",
            who.user_id,
            who.root_ns,
        )
        return cls([(r["namespace_id"], r["mount_path"]) for r in rows], who.root_ns)

    def find(self, path: str) -> tuple[int | None, str, str]:
        """(namespace or None for the root, path inside it, mount)."""
        for ns, mount in self.rows:
            if is_within(path, mount):
                return ns, ("/" if path == mount else path[len(mount) :]), mount
        return None, path, "/"


def needs_routing(msg: m.Message) -> bool:
    return getattr(msg, "ns", 0) is None and isinstance(msg, (*_ONE_PATH, m.Move, m.CommitBatch))


async def route(meta: MetaStore, who: Principal, msg: Any) -> tuple[Any, str, Mounts]:
    """The request rewritten to the namespace its path lives in, and that mount."""
    mounts = await Mounts.of(meta, who)
    if not mounts.rows:
        return msg, "/", mounts
    if isinstance(msg, m.Move):
        src_ns, src, mount = mounts.find(validate_path(msg.src))
        dst_ns, dst, _ = mounts.find(validate_path(msg.dst))
        if src_ns != dst_ns:
            return msg, "", mounts  # across namespaces: see ``move``
        return dataclasses.replace(msg, ns=src_ns, src=src, dst=dst), mount, mounts
    if isinstance(msg, m.CommitBatch):
        found = {mounts.find(validate_path(f.path))[::2] for f in msg.files}
        if len(found) > 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "a commit batch must stay inside one shared folder")
        if not found:
            return msg, "/", mounts
        ((ns, mount),) = found
        files = [dataclasses.replace(f, path=mounts.find(f.path)[1]) for f in msg.files]
        return dataclasses.replace(msg, ns=ns, files=files), mount, mounts
    ns, inner, mount = mounts.find(validate_path(msg.path))
    return dataclasses.replace(msg, ns=ns, path=inner), mount, mounts


async def move(meta: MetaStore, who: Principal, msg: m.Move, mounts: Mounts) -> m.Committed:
    """A move between namespaces: the copy gets a new history at ``dst``; the
    old one stays in the source namespace's history."""
    src_ns, src, _ = mounts.find(validate_path(msg.src))
    dst_ns, dst, dst_mount = mounts.find(validate_path(msg.dst))
    if src == "/" or dst == "/":
        raise ProtocolError(ErrorCode.BAD_PATH, "a shared folder's mount point cannot be moved or replaced")
    seq, entry = await meta.move_across(who, msg.key, src_ns, src, dst_ns, dst, msg.parent)
    return m.Committed(msg.id, seq, _entry_out(entry, dst_mount))


def _entry_out(entry: m.Entry, mount: str) -> m.Entry:
    if mount == "/":
        return entry
    return dataclasses.replace(entry, path=mount if entry.path == "/" else mount + entry.path)


def outward(reply: Any, mount: str, request: Any, mounts: Mounts) -> m.Message | bytes:
    """``reply`` with its paths in the user's tree; a listing of a folder of the
    root namespace also shows the shared folders mounted in it."""
    if isinstance(reply, m.Listing) and mount == "/" and reply.next is None:
        names = {e.path for e in reply.entries}
        extra = [
            m.Entry(p, "dir", 0, 0) for _, p in mounts.rows if parent_of(p) == request.path and p not in names
        ]
        reply = dataclasses.replace(reply, entries=sorted([*reply.entries, *extra], key=lambda e: e.path))
    if mount == "/":
        return cast(m.Message, reply)
    match reply:
        case m.EntryReply() | m.Committed() | m.Restored():
            return dataclasses.replace(reply, entry=_entry_out(reply.entry, mount))
        case m.Listing() | m.SnapshotListing():
            return dataclasses.replace(reply, entries=[_entry_out(e, mount) for e in reply.entries])
        case m.CommittedBatch():
            results = [dataclasses.replace(r, entry=_entry_out(r.entry, mount)) if r.entry else r
                       for r in reply.results]  # fmt: skip
            return dataclasses.replace(reply, results=results)
        case m.Versions():
            infos = [dataclasses.replace(v, entry=_entry_out(v.entry, mount)) for v in reply.versions]
            return dataclasses.replace(reply, versions=infos)
        case m.VersionReply():
            return dataclasses.replace(
                reply, info=dataclasses.replace(reply.info, entry=_entry_out(reply.info.entry, mount))
            )
        case m.DeletedListing():
            files = [dataclasses.replace(f, entry=_entry_out(f.entry, mount)) for f in reply.files]
            return dataclasses.replace(reply, files=files)
    return cast(m.Message, reply)
