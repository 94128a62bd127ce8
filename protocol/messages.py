"""Typed messages: one frozen, slotted dataclass per request, reply, push and error.

Every request carries an ``id`` chosen by the sender; its reply (or an
``Error``) echoes it, so many requests can be in flight on one connection.
``key`` on mutating requests is a client-chosen idempotency key: sending the
same request again (after a dropped connection) returns the first result.
``ns`` selects a namespace; ``None`` means the user's root namespace.

Block bytes are not in these messages: they travel in binary frames
(:class:`protocol.framing.BlockFrame`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


@dataclass(frozen=True, slots=True)
class BlockRef:
    """One block of a file version. On the wire: ``[hex hash, size]``."""

    hash: bytes
    size: int


@dataclass(frozen=True, slots=True)
class Entry:
    """The current (or a past) version of one file or folder."""

    path: str
    kind: Literal["file", "dir"]
    file_id: int
    version: int
    size: int = 0
    mtime_ns: int = 0
    executable: bool = False
    content_hash: bytes | None = None
    blocks: list[BlockRef] | None = None  # None where a listing leaves them out
    deleted: bool = False
    device: str | None = None
    committed_ns: int = 0  # server time of the commit


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    ns: int
    path: str  # where it is mounted in the user's tree ("/" for the root namespace)
    role: Literal["owner", "editor", "viewer"]
    head_seq: int


class Message:
    """Base of every message; ``TYPE`` is its name on the wire."""

    __slots__ = ()
    TYPE: ClassVar[str]


# --- handshake -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    versions: list[int]
    client: str = ""
    # on the LAN peer link only (see client.lan): the asking device's server-signed
    # ticket, its TLS certificate (DER, base64) and its signature over the serving
    # peer's certificate fingerprint, which binds the ticket to this connection
    ticket: str = ""
    cert: str = ""
    proof: str = ""
    # what the client understands beyond the version: "incoming" (it takes Incoming pushes)
    features: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    version: int
    server: str
    user: str
    device_id: int
    max_frame: int
    max_in_flight: int
    max_block: int
    namespaces: list[NamespaceInfo] = field(default_factory=list)
    ticket: str = ""  # on the LAN peer link: the serving device's ticket (vouches for its TLS key)


# --- requests --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TYPE: ClassVar[str] = "ping"
    id: int


@dataclass(frozen=True, slots=True)
class Stat(Message):
    TYPE: ClassVar[str] = "stat"
    id: int
    path: str
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class ListFolder(Message):
    TYPE: ClassVar[str] = "list_folder"
    id: int
    path: str
    ns: int | None = None
    after: str | None = None  # page cursor: the last path of the previous page
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class ListChanges(Message):
    TYPE: ClassVar[str] = "list_changes"
    id: int
    since: int  # journal seq already seen (0 = from the start)
    ns: int | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class QueryBlocks(Message):
    """Which of these blocks must I send? (Answered per user: see server.)"""

    TYPE: ClassVar[str] = "query_blocks"
    id: int
    hashes: list[bytes]


@dataclass(frozen=True, slots=True)
class GetBlock(Message):
    TYPE: ClassVar[str] = "get_block"
    id: int
    hash: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.id < 2**32:  # the reply's binary header carries it in 32 bits
            raise ValueError(f"id must be 0 to {2**32 - 1} (a block reply carries it in 32 bits)")


@dataclass(frozen=True, slots=True)
class Commit(Message):
    """Make ``path`` a file with these blocks, based on version ``parent``
    (``None``: the path must not exist yet)."""

    TYPE: ClassVar[str] = "commit"
    id: int
    key: str
    path: str
    parent: int | None
    size: int
    mtime_ns: int
    blocks: list[bytes]
    executable: bool = False
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class FileCommit:
    """One file of a :class:`CommitBatch`: the fields of a :class:`Commit`."""

    path: str
    parent: int | None
    size: int
    mtime_ns: int
    blocks: list[bytes]
    executable: bool = False


@dataclass(frozen=True, slots=True)
class CommitBatch(Message):
    """Commit many files in one transaction (many small files sync as one
    round trip). Each file is checked on its own: a stale parent fails that
    file only; the others commit together."""

    TYPE: ClassVar[str] = "commit_batch"
    id: int
    key: str
    files: list[FileCommit]
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class Mkdir(Message):
    TYPE: ClassVar[str] = "mkdir"
    id: int
    key: str
    path: str
    parents: bool = True
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class Move(Message):
    TYPE: ClassVar[str] = "move"
    id: int
    key: str
    src: str
    dst: str
    parent: int | None = None  # if set, src must still be at this version
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class Delete(Message):
    TYPE: ClassVar[str] = "delete"
    id: int
    key: str
    path: str
    parent: int | None = None  # if set, path must still be at this version
    ns: int | None = None
    # if set, nothing at or below path may be a newer version than this (version ids only grow):
    # a folder is not deleted with a file put in it since the sender last looked
    newest: int | None = None


# --- replies and pushes ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TYPE: ClassVar[str] = "pong"
    id: int


@dataclass(frozen=True, slots=True)
class Ok(Message):
    TYPE: ClassVar[str] = "ok"
    id: int


@dataclass(frozen=True, slots=True)
class EntryReply(Message):
    TYPE: ClassVar[str] = "entry"
    id: int
    entry: Entry


@dataclass(frozen=True, slots=True)
class Listing(Message):
    TYPE: ClassVar[str] = "listing"
    id: int
    entries: list[Entry]
    next: str | None = None


@dataclass(frozen=True, slots=True)
class Changes(Message):
    TYPE: ClassVar[str] = "changes"
    id: int
    ns: int
    entries: list[Entry]
    cursor: int
    has_more: bool


@dataclass(frozen=True, slots=True)
class BlocksMissing(Message):
    TYPE: ClassVar[str] = "blocks_missing"
    id: int
    missing: list[bytes]


@dataclass(frozen=True, slots=True)
class Committed(Message):
    TYPE: ClassVar[str] = "committed"
    id: int
    seq: int
    entry: Entry


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one item of a batch failed: an :class:`Error` without a request id."""

    code: str
    message: str
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    entry: Entry | None = None  # committed
    failure: Failure | None = None  # or not, and why

    def __post_init__(self) -> None:
        if (self.entry is None) == (self.failure is None):
            raise ValueError("needs exactly one of 'entry' and 'failure'")


@dataclass(frozen=True, slots=True)
class CommittedBatch(Message):
    TYPE: ClassVar[str] = "committed_batch"
    id: int
    seq: int
    results: list[BatchResult]  # one per file, in order


@dataclass(frozen=True, slots=True)
class Changed(Message):
    """Push: namespace ``ns`` has journal entries up to ``seq``. Only a hint."""

    TYPE: ClassVar[str] = "changed"
    ns: int
    seq: int


@dataclass(frozen=True, slots=True)
class Error(Message):
    TYPE: ClassVar[str] = "error"
    id: int | None
    code: str
    message: str
    detail: dict[str, Any] | None = None


# --- versions and snapshots ------------------------------------------------------
#
# Every saved state of a file is a version; a snapshot is the namespace's
# journal cut at a time (``at_ns``: server nanoseconds since the epoch, cut to
# the last change committed at or before it). Restores never rewrite history:
# they commit new versions, so synced devices apply them like any change.


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One saved state of a file or folder, as its history shows it.
    ``entry.deleted`` marks a deletion (a tombstone, without content)."""

    entry: Entry
    author: str | None = None  # the user whose device saved it
    current: bool = False  # the state it has now
    damaged: bool = False  # fsck found a block of it missing or corrupt


@dataclass(frozen=True, slots=True)
class DeletedFile:
    """A deleted file or folder that ``Restore`` (without a version) brings back."""

    entry: Entry  # its last state before the deletion: what comes back
    deleted_ns: int  # server time of the deletion
    device: str | None = None  # the device that deleted it
    author: str | None = None


@dataclass(frozen=True, slots=True)
class History(Message):
    """Every version of the file at ``path`` (or last there), newest first,
    following the file across renames. Page with ``before`` = the reply's ``next``."""

    TYPE: ClassVar[str] = "history"
    id: int
    path: str
    ns: int | None = None
    before: int | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class GetVersion(Message):
    """One version of the file at ``path`` with its blocks (``None``: the current one)."""

    TYPE: ClassVar[str] = "get_version"
    id: int
    path: str
    version: int | None = None
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class ListDeleted(Message):
    """Deleted files and folders at or under ``path`` that can be restored."""

    TYPE: ClassVar[str] = "list_deleted"
    id: int
    path: str = "/"
    ns: int | None = None
    after: str | None = None  # page cursor: the last path of the previous page
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Snapshot(Message):
    """Everything at or under ``path`` as it was at ``at_ns`` (recursive, by path)."""

    TYPE: ClassVar[str] = "snapshot"
    id: int
    path: str
    at_ns: int
    ns: int | None = None
    after: str | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Restore(Message):
    """Make ``version`` of the file at ``path`` current again, as a new
    version; without ``version``, undelete ``path`` (a folder with its contents)."""

    TYPE: ClassVar[str] = "restore"
    id: int
    key: str
    path: str
    version: int | None = None
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class Rewind(Message):
    """Put ``path`` and everything under it back as it was at ``at_ns``, in one
    change: files that did not exist then are deleted (and can be restored)."""

    TYPE: ClassVar[str] = "rewind"
    id: int
    key: str
    path: str
    at_ns: int
    ns: int | None = None


@dataclass(frozen=True, slots=True)
class Versions(Message):
    TYPE: ClassVar[str] = "versions"
    id: int
    versions: list[VersionInfo]
    next: int | None = None


@dataclass(frozen=True, slots=True)
class VersionReply(Message):
    TYPE: ClassVar[str] = "version"
    id: int
    info: VersionInfo


@dataclass(frozen=True, slots=True)
class DeletedListing(Message):
    TYPE: ClassVar[str] = "deleted"
    id: int
    files: list[DeletedFile]
    next: str | None = None


@dataclass(frozen=True, slots=True)
class SnapshotListing(Message):
    TYPE: ClassVar[str] = "snapshot_listing"
    id: int
    seq: int  # the journal cut the time names
    entries: list[Entry]
    next: str | None = None


@dataclass(frozen=True, slots=True)
class Restored(Message):
    TYPE: ClassVar[str] = "restored"
    id: int
    seq: int
    entry: Entry  # what now stands at the path
    changes: int | None = None  # journal entries the change wrote (None on a retried request)


# --- sharing, links and quotas --------------------------------------------------
#
# A shared folder is its own namespace, mounted into each member's tree at a
# path of their choosing (``NamespaceInfo.path``). Paths in these requests are
# paths in the asking user's tree (mounts included); the server resolves them.


@dataclass(frozen=True, slots=True)
class Share(Message):
    """Invite ``user`` to the folder at ``path`` with ``role`` (editor or viewer);
    turns the folder into a shared folder first if it is not one yet. Asking
    again for a member changes their role."""

    TYPE: ClassVar[str] = "share"
    id: int
    path: str
    user: str
    role: Literal["editor", "viewer"]


@dataclass(frozen=True, slots=True)
class Unshare(Message):
    """Remove ``user`` (a member or an invitee) from the shared folder at ``path``."""

    TYPE: ClassVar[str] = "unshare"
    id: int
    path: str
    user: str


@dataclass(frozen=True, slots=True)
class ListInvitations(Message):
    TYPE: ClassVar[str] = "list_invitations"
    id: int


@dataclass(frozen=True, slots=True)
class Accept(Message):
    """Accept invitation ``invitation``, mounting the folder at ``path``
    (``None``: its name at the root)."""

    TYPE: ClassVar[str] = "accept"
    id: int
    invitation: int
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Leave(Message):
    TYPE: ClassVar[str] = "leave"
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class ListMembers(Message):
    TYPE: ClassVar[str] = "list_members"
    id: int
    path: str


@dataclass(frozen=True, slots=True)
class CreateLink(Message):
    """A read-only link to the file or folder at ``path``."""

    TYPE: ClassVar[str] = "create_link"
    id: int
    path: str
    expires_s: int | None = None  # seconds from now; None: never
    password: str | None = None


@dataclass(frozen=True, slots=True)
class ListLinks(Message):
    TYPE: ClassVar[str] = "list_links"
    id: int


@dataclass(frozen=True, slots=True)
class RevokeLink(Message):
    TYPE: ClassVar[str] = "revoke_link"
    id: int
    link: int


@dataclass(frozen=True, slots=True)
class GetQuota(Message):
    TYPE: ClassVar[str] = "get_quota"
    id: int


@dataclass(frozen=True, slots=True)
class Invitation:
    invitation: int
    name: str  # the folder's name
    owner: str
    role: Literal["editor", "viewer"]
    invited_ns: int  # server time of the invitation


@dataclass(frozen=True, slots=True)
class Member:
    user: str
    role: Literal["owner", "editor", "viewer"]
    pending: bool = False  # invited, not accepted yet


@dataclass(frozen=True, slots=True)
class LinkInfo:
    link: int
    path: str  # in the creator's tree
    expires_ns: int | None
    password: bool
    created_ns: int


@dataclass(frozen=True, slots=True)
class Shared(Message):
    """Reply to :class:`Share`, :class:`Accept`: the shared folder's namespace
    and where it is mounted for the asking user."""

    TYPE: ClassVar[str] = "shared"
    id: int
    ns: int
    path: str
    role: Literal["owner", "editor", "viewer"]


@dataclass(frozen=True, slots=True)
class Invitations(Message):
    TYPE: ClassVar[str] = "invitations"
    id: int
    invitations: list[Invitation]


@dataclass(frozen=True, slots=True)
class Members(Message):
    TYPE: ClassVar[str] = "members"
    id: int
    ns: int
    members: list[Member]


@dataclass(frozen=True, slots=True)
class LinkCreated(Message):
    TYPE: ClassVar[str] = "link_created"
    id: int
    token: str  # shown once: only its hash is stored
    info: LinkInfo


@dataclass(frozen=True, slots=True)
class Links(Message):
    TYPE: ClassVar[str] = "links"
    id: int
    links: list[LinkInfo]


@dataclass(frozen=True, slots=True)
class QuotaReply(Message):
    TYPE: ClassVar[str] = "quota"
    id: int
    used: int  # bytes of the latest versions of files in namespaces the user owns
    quota: int | None  # None: unlimited


@dataclass(frozen=True, slots=True)
class ListNamespaces(Message):
    """The namespaces visible now, as in ``welcome`` (a syncing client asks
    after each pull of the root journal: see ``client.mounts``)."""

    TYPE: ClassVar[str] = "list_namespaces"
    id: int


@dataclass(frozen=True, slots=True)
class NamespaceList(Message):
    TYPE: ClassVar[str] = "namespace_list"
    id: int
    namespaces: list[NamespaceInfo]


@dataclass(frozen=True, slots=True)
class NamespacesChanged(Message):
    """Push: the namespaces visible to this user changed (a folder was shared
    with them, they left, or were removed). The full list, as in ``welcome``."""

    TYPE: ClassVar[str] = "namespaces"
    namespaces: list[NamespaceInfo]


# --- LAN peers -----------------------------------------------------------------
#
# Devices on one LAN hand each other blocks (client.lan). The server vouches for
# each device: it signs a short-lived *ticket* naming the device's TLS key
# fingerprint and opaque ids of the namespaces it may read. Peers check tickets
# with the server's public key; the server is not asked on the LAN.


@dataclass(frozen=True, slots=True)
class LanSpace:
    """One namespace as the LAN sees it: ``ns`` is never sent to peers; ``tag``
    (an opaque id that only members learn) is, and ``tag_key`` keys the
    rotating discovery tags (``protocol.lan.discovery_tag``)."""

    ns: int
    tag: str
    tag_key: str


@dataclass(frozen=True, slots=True)
class LanTickets(Message):
    """Vouch for this device's LAN TLS key (``fingerprint``: SHA-256 of its certificate)."""

    TYPE: ClassVar[str] = "lan_tickets"
    id: int
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class LanTicketsReply(Message):
    TYPE: ClassVar[str] = "lan_ticket"
    id: int
    ticket: str  # for every namespace the device can read now
    expires_s: int  # unix seconds
    server_key: str  # the server's Ed25519 public key (hex), as given at login
    spaces: list[LanSpace]


@dataclass(frozen=True, slots=True)
class Upcoming(Message):
    """Streaming sync: this device is about to upload, then commit, a file of
    these blocks in namespace ``ns`` (which it may write). The server tells the
    namespace's other devices (:class:`Incoming`), which may start fetching the
    blocks from their LAN peers before the commit names them. Only a hint: the
    server stores nothing, and a device uses such a block only once a commit
    names its hash.

    ``base``: the content hash of the version this upload replaces. Sent with
    no ``blocks`` it is the earlier hint of an edit, before the device has even
    read the new version: a device holding ``base`` may start copying it into
    the staging file of the new version, which then needs only the blocks that
    changed (see ``client.engine``); sent again with the blocks of ``base``
    itself, it says the edit changed nothing after all (those copies can go)."""

    TYPE: ClassVar[str] = "upcoming"
    id: int
    ns: int
    blocks: list[BlockRef]
    base: bytes | None = None

    def __post_init__(self) -> None:
        if self.base is not None and len(self.base) != 32:
            raise ValueError("base must be a 32-byte content hash")
        if not self.blocks and self.base is None:
            raise ValueError("an announcement names blocks, a base version, or both")


@dataclass(frozen=True, slots=True)
class Incoming(Message):
    """Push (to clients whose hello named the ``incoming`` feature): another
    device of namespace ``ns`` is uploading a file of these blocks (see
    :class:`Upcoming`, whose ``base`` it passes on). Only a hint."""

    TYPE: ClassVar[str] = "incoming"
    ns: int
    blocks: list[BlockRef]
    base: bytes | None = None


ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello, Welcome, Ping, Stat, ListFolder, ListChanges, QueryBlocks, GetBlock, Commit, Mkdir, Move,
    Delete, Pong, Ok, EntryReply, Listing, Changes, BlocksMissing, Committed, Changed, Error,
    CommitBatch, CommittedBatch,
    History, GetVersion, ListDeleted, Snapshot, Restore, Rewind,
    Versions, VersionReply, DeletedListing, SnapshotListing, Restored,
    Share, Unshare, ListInvitations, Accept, Leave, ListMembers, CreateLink, ListLinks, RevokeLink, GetQuota,
    Shared, Invitations, Members, LinkCreated, Links, QuotaReply, NamespacesChanged, ListNamespaces,
    NamespaceList, LanTickets, LanTicketsReply, Upcoming, Incoming,
)  # fmt: skip
BY_TYPE: dict[str, type[Message]] = {m.TYPE: m for m in ALL_MESSAGES}
