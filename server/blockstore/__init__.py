"""Content-addressed block stores: where the server keeps file bytes.

Terms used throughout this package:

block
    An immutable run of bytes, at most a few MiB, cut from a file by the
    client's chunker. Blocks are shared between files, versions and users.
hash (``h``)
    The raw 32-byte SHA-256 of a block's bytes (``protocol.hashing.block_hash``).
    It is the block's only name; hex appears only in storage keys and messages.
store
    Something implementing :class:`BlockStore`: a map from hash to bytes where
    every entry satisfies ``sha256(bytes) == hash``.
visible
    A block is visible once ``has``/``get``/``iter_hashes`` can see it. A store
    makes a block visible only after the whole of it is durably written and its
    hash verified; there is never a visible, partially written or mismatched block.
idempotent
    Putting a block that is already stored succeeds and changes nothing;
    deleting an absent block succeeds.

Backends: :class:`server.blockstore.local.FileBlockStore` (a directory tree),
:class:`server.blockstore.s3.S3BlockStore` (S3 or an S3-compatible server) and
:class:`server.blockstore.cache.CachedBlockStore` (a byte-bounded LRU memory tier
over either). Build one from a configuration string with :func:`open_block_store`.

Errors are :class:`BlockStoreError` subclasses whose message is a single line
a person can act on; backend exceptions (``OSError``, botocore) are translated.
"""

from __future__ import annotations

import os
import pathlib
import re
import typing
from collections.abc import AsyncIterator

__all__ = [
    "BadBlock",
    "BlockNotFound",
    "BlockStore",
    "BlockStoreError",
    "StoreUnavailable",
    "open_block_store",
]


class BlockStoreError(Exception):
    """Base of every block-store error; the message is one actionable line."""


class BlockNotFound(BlockStoreError):
    """The store does not hold a block with this hash."""


class BadBlock(BlockStoreError):
    """The bytes offered for a block do not hash to its name."""


class StoreUnavailable(BlockStoreError):
    """The backend is unreachable or unusable (I/O error, 5xx, timeout, bad credentials, ...).

    Retrying later may succeed; the server reports it as ``unavailable``.
    """


@typing.runtime_checkable
class BlockStore(typing.Protocol):
    """A content-addressed block store. ``h`` is always a raw 32-byte SHA-256."""

    async def put(self, h: bytes, data: bytes | memoryview) -> None:
        """Store ``data`` under ``h``.

        Verifies ``sha256(data) == h`` before the block becomes visible (else
        :class:`BadBlock`, and nothing is stored). Idempotent; concurrent puts of
        the same block are safe. The caller must not mutate ``data`` until it returns.
        """
        ...

    async def get(self, h: bytes) -> bytes:
        """The block's bytes, or :class:`BlockNotFound`."""
        ...

    async def has(self, h: bytes) -> bool:
        """Whether the block is stored."""
        ...

    async def delete(self, h: bytes) -> None:
        """Remove the block; absent is fine."""
        ...

    def iter_hashes(self) -> AsyncIterator[bytes]:
        """Every stored block's hash, once each, in no particular order."""
        ...

    async def check(self) -> None:
        """Raise :class:`StoreUnavailable` with a clear message if the store is unusable.

        Called at startup (it may create the bucket or directory) and by health checks.
        """
        ...

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        ...


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def open_block_store(
    spec: str,
    *,
    data_dir: pathlib.Path,
    s3_endpoint: str | None = None,
    cache_bytes: int = 0,
) -> BlockStore:
    """Build the block store a configuration string names.

    ``spec`` is one of:

    * ``file:PATH`` (also ``file://PATH``): a :class:`~server.blockstore.local.FileBlockStore`
      rooted at ``PATH``; a relative ``PATH`` is relative to the current directory
      (resolved now). ``file:`` with no path, or an empty spec, means ``data_dir/blocks``.
    * ``s3://bucket[/prefix]``: an :class:`~server.blockstore.s3.S3BlockStore`; keys live
      under ``prefix/blocks/``. ``s3_endpoint`` selects an S3-compatible server (MinIO,
      moto, ...); region and credentials come from the standard AWS environment variables
      (``AWS_DEFAULT_REGION`` defaulting to ``us-east-1``).

    ``cache_bytes > 0`` wraps the store in a :class:`~server.blockstore.cache.CachedBlockStore`
    holding at most that many bytes of hot blocks in memory.

    Raises ``ValueError`` for a spec it does not understand. Does no I/O beyond
    preparing a local directory; call ``await store.check()`` to find out if it works.
    """
    if cache_bytes < 0:
        raise ValueError(f"block cache size must be >= 0 bytes, got {cache_bytes}")
    text = spec.strip()
    store: BlockStore
    if text == "" or text.startswith("file:"):
        from server.blockstore.local import FileBlockStore

        raw = text.removeprefix("file:")
        if raw.startswith("//"):
            raw = raw[2:]
        root = pathlib.Path(data_dir) / "blocks" if raw == "" else pathlib.Path(os.path.expanduser(raw))
        store = FileBlockStore(root.absolute())
    elif text.startswith("s3://"):
        from server.blockstore.s3 import S3BlockStore

        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(
                f"block store {spec!r}: {bucket!r} is not a valid S3 bucket name "
                "(3-63 lowercase letters, digits, '.' or '-'); expected s3://bucket[/prefix]"
            )
        store = S3BlockStore(bucket, prefix, s3_endpoint or None)
    else:
        raise ValueError(
            f"unknown block store {spec!r}: expected 'file:PATH' (a directory) or 's3://bucket[/prefix]'"
        )
    if cache_bytes > 0:
        from server.blockstore.cache import CachedBlockStore

        store = CachedBlockStore(store, cache_bytes)
    return store


def check_hash(h: bytes) -> None:
    """ValueError unless ``h`` is a raw 32-byte hash (a programming error, not a client one)."""
    if not isinstance(h, bytes) or len(h) != 32:
        raise ValueError(f"block hash must be 32 raw bytes, got {h!r:.80}")
