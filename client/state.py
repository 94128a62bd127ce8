"""Local sync state in SQLite (WAL): the remote tree as the server's journal
last described it, the synced tree (the merge base: what both sides last
agreed on), the observed stats and hashes of local files, and the cursor.

Every write here happens *after* the disk or the server it describes has
changed, in one transaction, so a crash leaves state that is stale, never
ahead of reality: the next scan and pull reconcile it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from client.planner import Node
from protocol import failpoints
from protocol import messages as m
from protocol.framing import dumps, from_wire

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS remote (path TEXT PRIMARY KEY, file_id INTEGER NOT NULL, entry BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS remote_by_file ON remote (file_id);
CREATE TABLE IF NOT EXISTS synced (
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, content_hash BLOB, executable INTEGER NOT NULL,
    version INTEGER NOT NULL, file_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS observed (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    content_hash BLOB NOT NULL, executable INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Observed:
    size: int
    mtime_ns: int
    inode: int
    content_hash: bytes
    executable: bool


MAX_ENTRIES = 50_000  # whole entries (with block lists) kept from recent pulls and records
_Edit = tuple[str, str, Any]  # (table, path, its new row as the cached tree holds it, or None: deleted)


def node_of(entry: m.Entry) -> Node:
    return Node(entry.kind, entry.content_hash, entry.executable, entry.version, entry.file_id)


def _below(path: str) -> tuple[str, str]:
    """SQL range (exclusive) covering every path strictly below ``path``."""
    return path + "/", path + "0"  # '0' follows '/' in byte order


class State:
    def __init__(self, db: Path) -> None:
        db.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a power cut may lose the last updates, never consistency; stale state is
        # reconciled by the next scan and pull (it is never ahead of the disk or the server)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        # the three trees as last read, until a transaction writes their table: a live
        # cycle reads them all, and most cycles follow one that changed nothing; and
        # under "entries", whole remote entries the last pulls and records wrote
        self._trees: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _tx(
        self, writes: tuple[str, ...] = ("remote", "synced", "observed"), edits: list[_Edit] | None = None
    ) -> Iterator[None]:
        """One transaction that may write the tables ``writes`` names. (``with self.db``
        is none: the connection is in autocommit mode, so each statement would commit on its
        own and a failure or a kill halfway through would leave half an update.)

        Cached trees of those tables are dropped, to be read again when next needed,
        unless the body lists every row it changed in ``edits``: then, once committed,
        the same changes are made to the cached trees (a live cycle that records one
        file must not re-read 10,000 rows for the next)."""
        committed = False
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                failpoints.hit("client.state.tx")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            committed = True
        finally:
            if committed and edits is not None:
                for table, path, value in edits:
                    tree = self._trees.get(table)
                    if tree is None and table == "entries" and value is not None:
                        tree = self._trees["entries"] = {}
                    if tree is not None and value is None:
                        tree.pop(path, None)
                    elif tree is not None:
                        tree[path] = value
                if len(self._trees.get("entries", ())) > MAX_ENTRIES:
                    del self._trees["entries"]
            else:
                for table in (*writes, "entries") if "remote" in writes else writes:
                    self._trees.pop(table, None)

    def _cached(self, table: str, read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        tree = self._trees.get(table)
        if tree is None:
            tree = self._trees[table] = read()
        return dict(tree)  # the caller's to change

    # --- meta ------------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- remote tree -------------------------------------------------------------

    def apply_changes(self, entries: Iterable[m.Entry], cursor: int, cursor_key: str = "cursor") -> None:
        """Fold journal entries into the remote tree and advance the cursor (of
        their namespace: ``cursor_key``), atomically."""
        edits: list[_Edit] = []
        with self._tx(("remote",), edits):
            for e in entries:
                # the same file at another path means it moved there
                for (gone,) in self.db.execute(
                    "DELETE FROM remote WHERE file_id = ? AND path != ? RETURNING path", (e.file_id, e.path)
                ).fetchall():
                    edits += [("remote", gone, None), ("entries", gone, None)]
                if e.deleted:
                    self.db.execute("DELETE FROM remote WHERE path = ?", (e.path,))
                    edits += [("remote", e.path, None), ("entries", e.path, None)]
                else:
                    self.db.execute(
                        "INSERT OR REPLACE INTO remote (path, file_id, entry) VALUES (?, ?, ?)",
                        (e.path, e.file_id, dumps(e)),
                    )
                    edits += [("remote", e.path, node_of(e)), ("entries", e.path, e)]
            self.put(cursor_key, str(cursor))

    def reset_remote(self) -> None:
        """Forget the remote tree: every namespace's journal is read again from the start."""
        with self._tx(("remote",)):
            self.db.execute("DELETE FROM remote")
            self.db.execute("DELETE FROM meta WHERE key LIKE 'cursor%' OR key = 'mounts'")
            self.put("cursor", "0")

    def reset_remote_under(self, path: str, cursor_key: str) -> None:
        """Forget the remote tree below ``path`` (a shared folder's mount point,
        kept): that namespace's journal is read again from the start."""
        lo, hi = _below(path)
        with self._tx(("remote",)):
            self.db.execute("DELETE FROM remote WHERE path > ? AND path < ?", (lo, hi))
            self.put(cursor_key, "0")

    def remote_entry(self, path: str) -> m.Entry | None:
        known = self._trees.get("entries", {}).get(path)
        if known is not None:  # brought by the last pulls: what the downloads that follow ask for
            return known  # type: ignore[no-any-return]
        row = self.db.execute("SELECT entry FROM remote WHERE path = ?", (path,)).fetchone()
        return from_wire(m.Entry, orjson.loads(row[0]), "entry") if row else None

    def remote_tree(self) -> dict[str, Node]:
        return self._cached("remote", self._read_remote)

    def _read_remote(self) -> dict[str, Any]:
        out = {}
        for (blob,) in self.db.execute("SELECT entry FROM remote"):
            e = orjson.loads(blob)
            out[e["path"]] = Node(e["kind"], bytes.fromhex(e["content_hash"]) if e["content_hash"] else None,
                                  e["executable"], e["version"], e["file_id"])  # fmt: skip
        return out

    # --- synced tree ---------------------------------------------------------------

    def synced_tree(self) -> dict[str, Node]:
        return self._cached("synced", self._read_synced)

    def _read_synced(self) -> dict[str, Any]:
        return {
            p: Node(kind, h, bool(x), v, f)
            for p, kind, h, x, v, f in self.db.execute(
                "SELECT path, kind, content_hash, executable, version, file_id FROM synced"
            )
        }

    def synced_node(self, path: str) -> Node | None:
        row = self.db.execute(
            "SELECT kind, content_hash, executable, version, file_id FROM synced WHERE path = ?", (path,)
        ).fetchone()
        return Node(row[0], row[1], bool(row[2]), row[3], row[4]) if row else None

    def record(self, path: str, entry: m.Entry, observed: Observed | None) -> None:
        """``path`` is in sync at ``entry`` (and, for a file, on disk as ``observed``)."""
        self.record_many([(path, entry, observed)])

    def record_many(self, items: Sequence[tuple[str, m.Entry, Observed | None]]) -> None:
        """``record`` for many paths, in one transaction."""
        edits: list[_Edit] = []
        with self._tx(edits=edits):
            for path, entry, observed in items:
                self._record(path, entry, observed, edits)

    def _record(self, path: str, entry: m.Entry, observed: Observed | None, edits: list[_Edit]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO synced (path, kind, content_hash, executable, version, file_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (path, entry.kind, entry.content_hash, int(entry.executable), entry.version, entry.file_id),
        )
        self.db.execute(
            "INSERT OR REPLACE INTO remote (path, file_id, entry) VALUES (?, ?, ?)",
            (path, entry.file_id, dumps(entry)),
        )
        node = node_of(entry)
        edits += [("synced", path, node), ("remote", path, node), ("entries", path, entry)]
        if observed is not None:
            self._observe(path, observed, edits)

    def forget(self, path: str, *, remote: bool = True) -> None:
        """``path`` and everything below it are gone on both sides (``remote=False``:
        gone from the disk; the remote tree stays as the server's journal says)."""
        lo, hi = _below(path)
        tables = ("synced", "observed", "remote") if remote else ("synced", "observed")
        with self._tx(tables):
            for table in tables:
                self.db.execute(
                    f"DELETE FROM {table} WHERE path = ? OR (path > ? AND path < ?)", (path, lo, hi)
                )

    def forget_synced(self, path: str) -> None:
        lo, hi = _below(path)
        with self._tx(("synced",)):
            self.db.execute("DELETE FROM synced WHERE path = ? OR (path > ? AND path < ?)", (path, lo, hi))

    def moved(self, src: str, dst: str) -> None:
        """A local rename of ``src`` (and its subtree) to ``dst`` happened on disk."""
        lo, hi = _below(src)
        dst_lo, dst_hi = _below(dst)
        with self._tx(("synced", "observed")):
            for table in ("synced", "observed"):
                # the rename found nothing at dst: whatever was recorded there is stale
                self.db.execute(
                    f"DELETE FROM {table} WHERE path = ? OR (path > ? AND path < ?)", (dst, dst_lo, dst_hi)
                )
                self.db.execute(
                    f"UPDATE {table} SET path = ? || substr(path, ?) WHERE path = ? OR (path > ? AND path < ?)",
                    (dst, len(src) + 1, src, lo, hi),
                )

    def held_files(self) -> Iterator[tuple[str, list[m.BlockRef], tuple[int, int, int]]]:
        """Files on disk as last synced (their observed content is the synced
        version's), with that version's blocks and the (size, mtime_ns, inode)
        the scan saw: what this device can serve to LAN peers."""
        rows = self.db.execute(
            "SELECT r.path, r.entry, s.content_hash, o.size, o.mtime_ns, o.inode FROM remote r"
            " JOIN synced s ON s.path = r.path JOIN observed o ON o.path = r.path"
            " WHERE s.kind = 'file' AND s.content_hash = o.content_hash"
        ).fetchall()
        for path, blob, digest, size, mtime_ns, inode in rows:
            e = orjson.loads(blob)
            if e.get("blocks") and e.get("content_hash") == bytes(digest).hex():
                yield path, from_wire(list[m.BlockRef], e["blocks"], "blocks"), (size, mtime_ns, inode)

    # --- observed local files ----------------------------------------------------------

    def observed(self) -> dict[str, Observed]:
        return self._cached("observed", self._read_observed)

    def _read_observed(self) -> dict[str, Any]:
        return {
            p: Observed(s, t, i, h, bool(x))
            for p, s, t, i, h, x in self.db.execute(
                "SELECT path, size, mtime_ns, inode, content_hash, executable FROM observed"
            )
        }

    def observe(self, path: str, obs: Observed) -> None:
        edits: list[_Edit] = []
        with self._tx(("observed",), edits):
            self._observe(path, obs, edits)

    def _observe(self, path: str, obs: Observed, edits: list[_Edit]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO observed (path, size, mtime_ns, inode, content_hash, executable)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (path, obs.size, obs.mtime_ns, obs.inode, obs.content_hash, int(obs.executable)),
        )
        edits.append(("observed", path, obs))

    def unobserve(self, path: str) -> None:
        with self._tx(("observed",), [("observed", path, None)]):
            self.db.execute("DELETE FROM observed WHERE path = ?", (path,))
