"""FastCDC chunking and block/content hashing."""

from __future__ import annotations

import hashlib
import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import chunking
from protocol.chunking import MAX_BLOCK, MIN_BLOCK, Block, chunk_bytes, chunk_hashes, chunk_stream
from protocol.hashing import block_hash, content_hash, parse_hash

MiB = 1024 * 1024
SEEDS = st.integers(0, 2**32 - 1)


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def summary(blocks: list[Block]) -> list[tuple[int, int, bytes]]:
    return [(b.offset, b.length, b.hash) for b in blocks]


def assert_well_formed(blocks: list[Block], data: bytes) -> None:
    """Blocks tile the input in order, sizes are in bounds, hashes are right."""
    if not data:
        assert blocks == []
        return
    offset = 0
    for i, b in enumerate(blocks):
        assert b.offset == offset
        assert len(b.data) == b.length
        if i < len(blocks) - 1:
            assert MIN_BLOCK <= b.length <= MAX_BLOCK, (i, b.length)
        else:
            assert 1 <= b.length <= MAX_BLOCK
        assert b.hash == hashlib.sha256(data[offset : offset + b.length]).digest()
        offset += b.length
    assert offset == len(data)
    assert b"".join(bytes(b.data) for b in blocks) == data


def test_bounds() -> None:
    assert MIN_BLOCK == 256 * 1024
    assert MAX_BLOCK == 4 * MiB


# Mixed content: random bytes (cut by content), zeros and a short repeated
# pattern (few or no cut points, so the MAX_BLOCK bound decides).
@st.composite
def buffers(draw: st.DrawFn, max_size: int = 12 * MiB) -> bytes:
    size = draw(st.integers(0, max_size) | st.integers(max_size // 3, max_size))  # lean to big buffers
    kind = draw(st.sampled_from(["random", "zeros", "pattern", "mixed"]))
    seed = draw(SEEDS)
    if kind == "random":
        return random_bytes(seed, size)
    if kind == "zeros":
        return bytes(size)
    if kind == "pattern":
        return (random_bytes(seed, 7) * (size // 7 + 1))[:size]
    half = size // 2
    return random_bytes(seed, half) + bytes(size - half)


@settings(max_examples=40, deadline=None)
@given(data=buffers())
def test_chunks_are_well_formed_and_deterministic(data: bytes) -> None:
    blocks = chunk_bytes(data)
    assert_well_formed(blocks, data)
    assert summary(chunk_bytes(bytes(bytearray(data)))) == summary(blocks)  # same bytes, another object


@pytest.mark.parametrize(
    "size", [0, 1, MIN_BLOCK - 1, MIN_BLOCK, MIN_BLOCK + 1, MAX_BLOCK, MAX_BLOCK + 1, 3 * MAX_BLOCK]
)
def test_edge_sizes(size: int) -> None:
    data = random_bytes(size, size)
    blocks = chunk_bytes(data)
    assert_well_formed(blocks, data)
    if 0 < size <= MIN_BLOCK:
        assert len(blocks) == 1


def test_zeros_are_cut_at_max_block() -> None:
    blocks = chunk_bytes(bytes(10 * MiB))
    assert [b.length for b in blocks] == [MAX_BLOCK, MAX_BLOCK, 2 * MiB]
    assert blocks[0].hash == blocks[1].hash == hashlib.sha256(bytes(MAX_BLOCK)).digest()


class ShortReads:
    """A stream that hands out at most ``step`` bytes per read, like a pipe."""

    def __init__(self, data: bytes, step: int) -> None:
        self._f = io.BytesIO(data)
        self._step = step

    def readinto(self, b: memoryview) -> int:
        return self._f.readinto(b[: self._step])


def _stream_summary(blocks: object) -> list[tuple[int, int, bytes, bytes]]:
    # Block.data is only valid until the iterator advances: copy it at once.
    return [(b.offset, b.length, b.hash, bytes(b.data)) for b in blocks]  # type: ignore[attr-defined]


@settings(max_examples=25, deadline=None)
@given(data=buffers(), step=st.sampled_from([None, 1000, 65536, 3 * MiB + 17]))
def test_chunk_stream_equals_chunk_bytes(data: bytes, step: int | None) -> None:
    stream = io.BytesIO(data) if step is None else ShortReads(data, step)
    streamed = _stream_summary(chunk_stream(stream))
    expected = [(b.offset, b.length, b.hash, bytes(b.data)) for b in chunk_bytes(data)]
    assert streamed == expected


@settings(max_examples=25, deadline=None)
@given(data=buffers(), step=st.sampled_from([None, 1000, 3 * MiB + 17]),
       piece=st.sampled_from([1, MIN_BLOCK + 1, 5 * MiB + 3, 16 * MiB]))  # fmt: skip
def test_chunk_hashes_equals_chunk_bytes(data: bytes, step: int | None, piece: int) -> None:
    """Cut in pieces on one thread, hashed on another: the same blocks as in one go
    (``piece`` small, so cuts near each piece's end and short reads are crossed)."""
    stream = io.BytesIO(data) if step is None else ShortReads(data, step)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunking, "PIECE", piece)
        assert list(chunk_hashes(stream)) == summary(chunk_bytes(data))


def test_chunk_hashes_stopped_early_leaves_nothing_running() -> None:
    data = random_bytes(5, 40 * MiB)
    blocks = chunk_hashes(io.BytesIO(data))
    first = [next(blocks) for _ in range(3)]
    blocks.close()  # the buffers are released only after no hash still reads them
    assert first == summary(chunk_bytes(data))[:3]
    assert list(chunk_hashes(io.BytesIO(data))) == summary(chunk_bytes(data))


@pytest.mark.parametrize("size", [0, 1, 4096, MIN_BLOCK - 1, MIN_BLOCK, MIN_BLOCK + 1, MIN_BLOCK + 70_000])
@pytest.mark.parametrize("step", [None, 1000, 100_000])
def test_chunk_stream_around_the_minimum_block(size: int, step: int | None) -> None:
    # a stream no longer than MIN_BLOCK skips the chunker; the cut must not change
    data = random_bytes(size, size + 1)
    stream = io.BytesIO(data) if step is None else ShortReads(data, step)
    assert _stream_summary(chunk_stream(stream)) == [
        (b.offset, b.length, b.hash, bytes(b.data)) for b in chunk_bytes(data)
    ]
    stream = io.BytesIO(data) if step is None else ShortReads(data, step)
    assert list(chunk_hashes(stream)) == summary(chunk_bytes(data))


@settings(max_examples=20, deadline=None)
@given(
    seed=SEEDS,
    where=st.floats(0.3, 0.7),
    inserted=st.binary(min_size=1, max_size=64),
)
def test_an_insertion_changes_only_nearby_blocks(seed: int, where: float, inserted: bytes) -> None:
    data = random_bytes(seed, 8 * MiB)
    pos = int(len(data) * where)
    edited = data[:pos] + inserted + data[pos:]
    before = {b.hash for b in chunk_bytes(data)}
    after = {b.hash for b in chunk_bytes(edited)}
    assert len(before) >= 4  # the property is meaningful only with several blocks
    assert 1 <= len(after - before) <= 3
    assert len(before - after) <= 3


def test_average_block_size_is_about_one_mib() -> None:
    data = random_bytes(20240601, 32 * MiB)
    blocks = chunk_bytes(data)
    assert_well_formed(blocks, data)
    average = len(data) / len(blocks)
    assert 512 * 1024 <= average <= 2 * MiB, average


# --- hashing ---------------------------------------------------------------------------------


def test_content_hash_of_no_blocks_is_sha256_of_nothing() -> None:
    assert content_hash([]) == hashlib.sha256(b"").digest()
    assert content_hash(iter(())) == hashlib.sha256(b"").digest()


@given(hashes=st.lists(st.binary(min_size=32, max_size=32), max_size=8))
def test_content_hash_is_sha256_over_block_hashes_in_order(hashes: list[bytes]) -> None:
    expected = hashlib.sha256(b"".join(hashes)).digest()
    assert content_hash(hashes) == expected
    assert content_hash(iter(hashes)) == expected
    if hashes != hashes[::-1]:  # order matters
        assert content_hash(list(reversed(hashes))) != expected


@given(data=st.binary(max_size=4096))
def test_block_hash_is_raw_sha256(data: bytes) -> None:
    h = block_hash(data)
    assert h == hashlib.sha256(data).digest()
    assert len(h) == 32
    assert block_hash(memoryview(data)) == block_hash(bytearray(data)) == h


@given(h=st.binary(min_size=32, max_size=32))
def test_parse_hash_reads_hex(h: bytes) -> None:
    assert parse_hash(h.hex()) == h
    assert parse_hash(h.hex().upper()) == h


@pytest.mark.parametrize(
    "text",
    ["", "ab" * 31, "ab" * 33, "zz" * 32, "aa " * 16 + "aa" * 8, " " + "ab" * 31 + "a", 1, None, b"ab" * 32],
)
def test_parse_hash_rejects_anything_but_64_hex_digits(text: object) -> None:
    with pytest.raises(ValueError):
        parse_hash(text)
