"""The on-disk block cache and the SDK's small persistent state.

Layout under the home folder::

    ferry.sqlite3        index: blocks (hash, size, last use), pins, known
                         file entries, upload state, cursor, token
    blocks/ab/abcd…      one file per cached block, named by its SHA-256

Theory of operation. Blocks are immutable and named by their hash, so a
cached block never goes stale: only the *entries* (which blocks a path has
now) do, and those come from the server. A block file is written to a temp
name and renamed, so it is whole or absent; it is hashed again on every read
(a bad one — disk fault, half-restored backup — is dropped and fetched
again, never returned). ``last use`` is a counter, not a clock, so the LRU
order is exact and survives restarts and clock changes.

The bound: unpinned blocks take at most ``limit`` bytes; the least recently
used go first. Blocks of pinned files are exempt (a user who pins more than
the limit gets what they pinned), and count against nobody's LRU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (hash BLOB PRIMARY KEY, size INTEGER NOT NULL, used INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_used ON blocks (used);
CREATE TABLE IF NOT EXISTS pins (path TEXT PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pin_blocks (hash BLOB NOT NULL, path TEXT NOT NULL, PRIMARY KEY (hash, path));
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (path TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_UNPINNED = "NOT EXISTS (SELECT 1 FROM pin_blocks p WHERE p.hash = blocks.hash)"


class BlockCache:
    def __init__(self, home: Path, limit: int) -> None:
        self.home, self.limit = home, limit
        self.dir = home / "blocks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(home / "ferry.sqlite3", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # no fsync per index change: a cache may lose its last uses in a power cut, never its consistency
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._clock = self.db.execute("SELECT coalesce(max(used), 0) FROM blocks").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def _path(self, h: bytes) -> Path:
        name = h.hex()
        return self.dir / name[:2] / name

    # --- blocks (file I/O: call these from a worker thread) -------------------------

    def read(self, h: bytes) -> bytes | None:
        """The cached block, verified; None if absent or damaged (then dropped)."""
        try:
            data = self._path(h).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).digest() != h:
            self._path(h).unlink(missing_ok=True)
            return None
        return data

    def write(self, h: bytes, data: bytes) -> None:
        path = self._path(h)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    # --- index (call from one thread: the event loop's) ----------------------------

    def has(self, h: bytes) -> bool:
        return self.db.execute("SELECT 1 FROM blocks WHERE hash = ?", (h,)).fetchone() is not None

    def touch(self, h: bytes, size: int) -> None:
        """Record a use of a block now on disk (a new block enters as the newest)."""
        self._clock += 1
        self.db.execute(
            "INSERT INTO blocks (hash, size, used) VALUES (?, ?, ?)"
            " ON CONFLICT (hash) DO UPDATE SET used = excluded.used",
            (h, size, self._clock),
        )

    def forget(self, h: bytes) -> None:
        self.db.execute("DELETE FROM blocks WHERE hash = ?", (h,))
        self._path(h).unlink(missing_ok=True)

    def evict(self) -> list[bytes]:
        """Drop least recently used unpinned blocks until they fit the limit."""
        dropped = []
        over = self.unpinned_bytes() - self.limit
        rows = self.db.execute(f"SELECT hash, size FROM blocks WHERE {_UNPINNED} ORDER BY used")
        for h, size in rows.fetchall():
            if over <= 0:
                break
            self.forget(h)
            dropped.append(bytes(h))
            over -= size
        return dropped

    def unpinned_bytes(self) -> int:
        return int(
            self.db.execute(f"SELECT coalesce(sum(size), 0) FROM blocks WHERE {_UNPINNED}").fetchone()[0]
        )

    def total_bytes(self) -> int:
        return int(self.db.execute("SELECT coalesce(sum(size), 0) FROM blocks").fetchone()[0])

    def lru_order(self) -> list[bytes]:
        """Cached block hashes, least recently used first (what eviction would take first)."""
        return [bytes(r[0]) for r in self.db.execute("SELECT hash FROM blocks ORDER BY used")]

    # --- pins, known entries, uploads, state ---------------------------------------

    def pin(self, path: str, entry_json: str, hashes: list[bytes]) -> None:
        with self._tx():
            self.db.execute("DELETE FROM pin_blocks WHERE path = ?", (path,))
            self.db.execute("INSERT OR REPLACE INTO pins (path, entry) VALUES (?, ?)", (path, entry_json))
            self.db.executemany("INSERT OR IGNORE INTO pin_blocks (hash, path) VALUES (?, ?)",
                                [(h, path) for h in hashes])  # fmt: skip

    def unpin(self, path: str) -> None:
        with self._tx():
            self.db.execute("DELETE FROM pin_blocks WHERE path = ?", (path,))
            self.db.execute("DELETE FROM pins WHERE path = ?", (path,))

    def pins(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT path, entry FROM pins ORDER BY path").fetchall())

    def remember(self, table: str, path: str, value: str | None) -> None:
        """Keep (or with None drop) a path's row in ``files`` or ``uploads``."""
        assert table in ("files", "uploads")
        column = "entry" if table == "files" else "state"
        if value is None:
            self.db.execute(f"DELETE FROM {table} WHERE path = ?", (path,))
        else:
            self.db.execute(f"INSERT OR REPLACE INTO {table} (path, {column}) VALUES (?, ?)", (path, value))

    def recall(self, table: str, path: str) -> str | None:
        assert table in ("files", "uploads")
        column = "entry" if table == "files" else "state"
        row = self.db.execute(f"SELECT {column} FROM {table} WHERE path = ?", (path,)).fetchone()
        return None if row is None else str(row[0])

    def get_state(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM state WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    @contextlib.contextmanager
    def _tx(self):  # type: ignore[no-untyped-def]
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
