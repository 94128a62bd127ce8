"""What the crash and fault tests check after every kill (RELIABILITY.md I3, I6).

- :func:`check_server`: every block a live version references is in the block
  store and hashes right; every block the database lists as stored is really
  there (else the server would tell a client it need not send it); every
  commit a client saw acknowledged still exists; no file has two identical
  versions in a row (a retried commit applied twice).
- :class:`Oracle` remembers every content the test wrote at each path, so a
  file on a device can be checked to be one of them (never a partial or mixed
  file) and the final tree to be the last ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from protocol.chunking import chunk_bytes
from protocol.hashing import content_hash

BlockReader = Callable[[bytes], bytes | None]  # the stored bytes of a block, or None if absent


def file_blocks(root: Path) -> BlockReader:
    """Blocks of a ``file:`` store rooted at ``root``."""

    def read(h: bytes) -> bytes | None:
        try:
            return (root / h.hex()[:2] / h.hex()).read_bytes()
        except FileNotFoundError:
            return None

    return read


def s3_blocks(endpoint: str, bucket: str) -> BlockReader:
    """Blocks of an ``s3://bucket`` store (no prefix) at ``endpoint``."""
    import boto3
    import botocore.exceptions

    s3 = boto3.client("s3", endpoint_url=endpoint)

    def read(h: bytes) -> bytes | None:
        try:
            body: bytes = s3.get_object(Bucket=bucket, Key=f"blocks/{h.hex()[:2]}/{h.hex()}")["Body"].read()
            return body
        except botocore.exceptions.ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    return read


def digest_of(data: bytes) -> bytes:
    """A file's content hash as the server computes it (from its blocks)."""
    return content_hash(b.hash for b in chunk_bytes(data))


@dataclass
class Oracle:
    """Every content the test wrote, by path; the latest one is what must win."""

    root: Path
    rng: random.Random
    written: dict[str, set[bytes]] = field(default_factory=dict)  # path -> content hashes
    latest: dict[str, bytes] = field(default_factory=dict)  # path -> content hash (absent: deleted)

    def write(self, path: str, size: int) -> bytes:
        data = self.rng.randbytes(size)
        digest = digest_of(data)
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".writing~")
        tmp.write_bytes(data)  # whole at once: the client never sees it half-written at its name
        os.replace(tmp, target)
        self.written.setdefault(path, set()).add(digest)
        self.latest[path] = digest
        return data

    def delete(self, path: str) -> None:
        (self.root / path.lstrip("/")).unlink()
        self.latest.pop(path, None)

    def disk_problems(self, root: Path) -> list[str]:
        """Files under ``root`` (another device's copy, or this one) that are not
        exactly some content written at that path."""
        problems = []
        for path in sorted(_files(root)):
            data = (root / path.lstrip("/")).read_bytes()
            if digest_of(data) not in self.written.get(path, set()):
                problems.append(f"{path}: {len(data)} bytes that were never written there (partial or mixed)")
        return problems

    def converged(self, root: Path) -> list[str]:
        """How ``root`` differs from the latest writes (empty: it holds exactly them)."""
        here = {p: digest_of((root / p.lstrip("/")).read_bytes()) for p in _files(root)}
        problems = [f"{p}: missing" for p in self.latest if p not in here]
        problems += [
            f"{p}: not the latest content"
            for p, d in here.items()
            if p in self.latest and d != self.latest[p]
        ]
        problems += [f"{p}: should have been deleted" for p in here if p not in self.latest]
        return problems


def _files(root: Path) -> list[str]:
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".ferry")]
        for name in names:
            if name.startswith(".ferry") or name.endswith(".writing~"):
                continue
            out.append("/" + str(Path(folder, name).relative_to(root)))
    return out


def synced_versions(home: Path, root: Path) -> dict[str, tuple[int, bytes | None]]:
    """The client's merge base: path -> (version, content hash) it recorded as
    agreed with the server, i.e. acknowledged to it."""
    folder = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    db = sqlite3.connect(home / "folders" / folder / "state.db")
    try:
        rows = db.execute("SELECT path, version, content_hash FROM synced WHERE kind = 'file'").fetchall()
    finally:
        db.close()
    return {path: (version, bytes(h) if h is not None else None) for path, version, h in rows}


def check_server(database_url: str, read_block: BlockReader, acked: dict[int, bytes | None]) -> list[str]:
    """Everything wrong with the server's durable state (empty: all is well).
    ``acked``: version id -> content hash of every version a client saw acknowledged."""
    return asyncio.run(_check_server(database_url, read_block, acked))


async def _check_server(
    database_url: str, read_block: BlockReader, acked: dict[int, bytes | None]
) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        versions = await conn.fetch(
            "SELECT namespace_id, version_id, file_id, path, deleted, size, mtime_ns, content_hash, block_hashes"
            " FROM versions WHERE kind = 'file' ORDER BY namespace_id, file_id, version_id"
        )
        listed = {bytes(r["hash"]) for r in await conn.fetch("SELECT hash FROM blocks")}
        doomed = await _table_exists(conn, "gc_doomed")
        if doomed:
            listed -= {bytes(r["hash"]) for r in await conn.fetch("SELECT hash FROM gc_doomed")}
    finally:
        await conn.close()
    problems: list[str] = []
    referenced: dict[bytes, str] = {}
    for v in versions:
        if not v["deleted"]:
            raw = bytes(v["block_hashes"])
            for i in range(0, len(raw), 32):
                referenced.setdefault(raw[i : i + 32], f"{v['path']} v{v['version_id']}")
    for h in sorted(set(referenced) | listed):
        data = await asyncio.to_thread(read_block, h)
        where = referenced.get(h, "no version")
        if data is None:
            problems.append(f"block {h.hex()[:16]} ({where}) is listed or referenced but not stored")
        elif hashlib.sha256(data).digest() != h:
            problems.append(f"block {h.hex()[:16]} ({where}) is stored corrupt")
        elif h in referenced and h not in listed:
            problems.append(f"block {h.hex()[:16]} ({where}) is referenced but the database does not list it")
    by_id = {v["version_id"]: v for v in versions}
    for vid, digest in acked.items():
        v = by_id.get(vid)
        if v is None:
            problems.append(f"acknowledged version {vid} is lost")
        elif digest is not None and v["content_hash"] is not None and bytes(v["content_hash"]) != digest:
            problems.append(f"acknowledged version {vid} ({v['path']}) has other content now")
    for a, b in itertools.pairwise(versions):
        same = ("namespace_id", "file_id", "path", "deleted", "size", "mtime_ns", "content_hash")
        if all(a[k] == b[k] for k in same):
            problems.append(
                f"{b['path']}: versions {a['version_id']} and {b['version_id']} are one commit twice"
            )
    return problems


async def _table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


def server_tree(database_url: str) -> dict[str, bytes]:
    """The server's current files: path -> content hash (root namespaces only)."""

    async def go() -> dict[str, bytes]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT h.path, v.content_hash FROM heads h JOIN versions v"
                " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id WHERE h.kind = 'file'"
            )
        finally:
            await conn.close()
        return {r["path"]: bytes(r["content_hash"]) for r in rows}

    return asyncio.run(go())
