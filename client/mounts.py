"""Shared folders in the synced tree: one remote tree over several namespaces.

The user's tree is their root namespace with each shared folder (its own
namespace, with its own journal and cursor) mounted at a path. The engine
pulls every namespace's journal and folds them into one remote tree in the
user's coordinates: a shared folder's ``/a.txt`` mounted at ``/Team`` is
``/Team/a.txt``. Changes are sent without a namespace; the server routes
them by path (``server.mounts``), a move between namespaces included.

Rules kept here (pure functions, no I/O):

- the root namespace's entries at or under a mount are dropped: they are the
  tombstones left when the folder was turned into a shared folder (nothing
  can be written there since). The engine reads the namespace list *after*
  fetching the root journal, so a tombstone it sees always comes with the
  mount that explains it;
- each mount point itself is a folder in the remote tree (a namespace's
  journal has no entry for its own root);
- a mount that disappears (revoked, left) is forgotten from the remote and
  synced trees: its files stay on disk as plain local files of the user's
  own tree (and sync as such);
- under a viewer's mount, nothing local is sent, and a mount point is never
  deleted or moved on the server: those actions are held back and reported.
"""

from __future__ import annotations

import dataclasses

from client import planner as p
from protocol import messages as m
from protocol.paths import is_within

ROOT_CURSOR = "cursor"


def cursor_key(info: m.NamespaceInfo) -> str:
    return ROOT_CURSOR if info.path == "/" else f"cursor:{info.ns}"


def mount_of(path: str, spaces: list[m.NamespaceInfo]) -> m.NamespaceInfo | None:
    """The namespace ``path`` of the user's tree lives in (longest mount)."""
    found = [n for n in spaces if is_within(path, n.path)]
    return max(found, key=lambda n: len(n.path)) if found else None


def outward(entries: list[m.Entry], info: m.NamespaceInfo, spaces: list[m.NamespaceInfo]) -> list[m.Entry]:
    """A namespace's journal entries in the user's tree."""
    if info.path == "/":
        mounts = [n.path for n in spaces if n.path != "/"]
        return [e for e in entries if not any(is_within(e.path, mount) for mount in mounts)]
    return [dataclasses.replace(e, path=info.path + e.path) for e in entries if e.path != "/"]


def mount_point(info: m.NamespaceInfo) -> m.Entry:
    """The folder a shared namespace is mounted at (ids no real entry has)."""
    return m.Entry(info.path, "dir", file_id=-info.ns, version=-info.ns)


def held_back(action: p.Action, spaces: list[m.NamespaceInfo]) -> tuple[str, str] | None:
    """(path, why) if ``action`` would change a folder the user may only read,
    or remove or move a shared folder's mount point (that is ``ferry leave``)."""
    match action:
        case p.Upload(path=path) | p.MkdirRemote(path=path):
            paths, moving = [path], False
        case p.DeleteRemote(path=path):
            paths, moving = [path], True
        case p.MoveRemote(src=src, dst=dst):
            paths, moving = [src, dst], True
        case _:
            return None
    for path in paths:
        info = mount_of(path, spaces)
        if info is None:
            continue
        if info.role == "viewer":
            return path, "not uploaded: you may only read this shared folder (viewer)"
        if moving and info.path == path and path != "/":
            return path, "not changed on the server: a shared folder is removed with `ferry leave`"
    return None


def group_by_namespace(paths: list[str], spaces: list[m.NamespaceInfo]) -> dict[int, list[int]]:
    """Indexes of ``paths`` per namespace (a commit batch stays in one)."""
    groups: dict[int, list[int]] = {}
    for i, path in enumerate(paths):
        info = mount_of(path, spaces)
        groups.setdefault(info.ns if info else 0, []).append(i)
    return groups
