"""SHA-256 over blocks and streams, with flat memory."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

HASH_BYTES = 32


def block_hash(data: bytes | bytearray | memoryview) -> bytes:
    """Raw 32-byte SHA-256 of one block."""
    return hashlib.sha256(data).digest()


def content_hash(block_hashes: Iterable[bytes]) -> bytes:
    """A file's content hash: SHA-256 over its blocks' raw hashes, in order.

    Each block is verified against its own hash, so this names the whole
    content without hashing the bytes a second time. The empty file hashes
    the empty string.
    """
    h = hashlib.sha256()
    for b in block_hashes:
        h.update(b)
    return h.digest()


def parse_hash(text: object) -> bytes:
    """Hex string from the wire → 32 raw bytes, or ValueError."""
    if not isinstance(text, str) or len(text) != 2 * HASH_BYTES:
        raise ValueError(f"not a SHA-256 hex digest: {text!r}")
    raw = bytes.fromhex(text)  # skips ASCII whitespace, so check the length again
    if len(raw) != HASH_BYTES:
        raise ValueError(f"not a SHA-256 hex digest: {text!r}")
    return raw
