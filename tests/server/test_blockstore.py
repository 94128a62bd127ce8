"""Block stores: one conformance suite over every backend, then backend-specific behaviour.

Backends: a local directory, S3 (a moto server subprocess, fresh bucket per
test), and each of those behind a CachedBlockStore.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.blockstore import (
    BadBlock,
    BlockNotFound,
    BlockStore,
    BlockStoreError,
    StoreUnavailable,
    open_block_store,
)
from server.blockstore.cache import CachedBlockStore, LRUBytesMemoryCache
from server.blockstore.local import FileBlockStore
from server.blockstore.s3 import S3BlockStore
from tests.support.moto_server import free_port

MiB = 1024 * 1024
BACKENDS = ["file", "s3", "file+cache", "s3+cache"]


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def block(i: int, size: int = 1000) -> bytes:
    return random.Random(i).randbytes(size)


async def listed(store: BlockStore) -> list[bytes]:
    return [x async for x in store.iter_hashes()]


def fresh_bucket() -> str:
    return f"ferry-test-{uuid.uuid4().hex[:20]}"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlockStore]:
    kind: str = request.param
    inner: BlockStore
    if kind.startswith("s3"):
        endpoint = request.getfixturevalue("moto_endpoint")
        inner = S3BlockStore(fresh_bucket(), "tenant/x", endpoint)
    else:
        inner = FileBlockStore(tmp_path / "blocks")
    s: BlockStore = CachedBlockStore(inner, 6 * MiB) if kind.endswith("+cache") else inner
    await s.check()
    yield s
    await s.close()


# -- conformance: every backend ---------------------------------------------------


async def test_round_trip(store: BlockStore) -> None:
    data = block(1)
    assert not await store.has(h(data))
    await store.put(h(data), data)
    assert await store.has(h(data))
    assert await store.get(h(data)) == data
    await store.delete(h(data))
    assert not await store.has(h(data))
    with pytest.raises(BlockNotFound):
        await store.get(h(data))
    await store.delete(h(data))  # absent is fine


async def test_put_accepts_memoryview_and_empty_block(store: BlockStore) -> None:
    data = block(2)
    await store.put(h(data), memoryview(bytearray(data)))
    assert await store.get(h(data)) == data
    await store.put(h(b""), b"")
    assert await store.get(h(b"")) == b""
    assert sorted(await listed(store)) == sorted([h(data), h(b"")])


async def test_bad_block_is_rejected_and_never_visible(store: BlockStore) -> None:
    good, bad = block(3), block(4)
    with pytest.raises(BadBlock, match=h(good).hex()):
        await store.put(h(good), bad)
    assert not await store.has(h(good))
    assert not await store.has(h(bad))
    with pytest.raises(BlockNotFound):
        await store.get(h(good))
    assert await listed(store) == []
    await store.put(h(good), good)  # the right bytes still go in afterwards
    assert await store.get(h(good)) == good


async def test_put_is_idempotent(store: BlockStore) -> None:
    data = block(5)
    await store.put(h(data), data)
    await store.put(h(data), data)
    assert await store.get(h(data)) == data
    assert await listed(store) == [h(data)]


async def test_concurrent_puts_of_the_same_block(store: BlockStore) -> None:
    data = block(6, 64 * 1024)
    await asyncio.gather(*(store.put(h(data), data) for _ in range(16)))
    assert await store.get(h(data)) == data
    assert await listed(store) == [h(data)]


async def test_concurrent_puts_of_different_blocks(store: BlockStore) -> None:
    blocks = [block(100 + i, 1000 + i) for i in range(40)]
    await asyncio.gather(*(store.put(h(b), b) for b in blocks))
    got = await asyncio.gather(*(store.get(h(b)) for b in blocks))
    assert got == blocks
    assert sorted(await listed(store)) == sorted(h(b) for b in blocks)


async def test_get_absent_raises_block_not_found(store: BlockStore) -> None:
    missing = h(b"never stored")
    with pytest.raises(BlockNotFound, match=missing.hex()) as exc:
        await store.get(missing)
    assert isinstance(exc.value, BlockStoreError)
    assert "\n" not in str(exc.value)


async def test_iter_hashes_lists_exactly_what_is_stored(store: BlockStore) -> None:
    assert await listed(store) == []
    blocks = [block(200 + i, 10 + i) for i in range(25)]
    for b in blocks:
        await store.put(h(b), b)
    for b in blocks[::3]:
        await store.delete(h(b))
    expected = sorted(h(b) for i, b in enumerate(blocks) if i % 3)
    got = await listed(store)
    assert len(got) == len(set(got))
    assert sorted(got) == expected


async def test_four_mib_block(store: BlockStore) -> None:
    data = os.urandom(4 * MiB)
    await store.put(h(data), data)
    assert await store.get(h(data)) == data
    assert await store.has(h(data))


async def test_malformed_hash_is_a_programming_error(store: BlockStore) -> None:
    with pytest.raises(ValueError):
        await store.get(b"short")
    with pytest.raises(ValueError):
        await store.put(h(b"x").hex().encode(), b"x")


# -- local directory --------------------------------------------------------------


async def test_local_layout_and_no_leftover_temp_files(tmp_path: Path) -> None:
    s = FileBlockStore(tmp_path)
    data = block(7)
    x = h(data).hex()
    await s.put(h(data), data)
    assert (tmp_path / x[:2] / x).read_bytes() == data
    with pytest.raises(BadBlock):
        await s.put(h(data), block(8))
    await asyncio.gather(*(s.put(h(block(i)), block(i)) for i in range(10)))
    assert list((tmp_path / "tmp").iterdir()) == []
    await s.close()


@pytest.mark.parametrize("size", [256 * 1024 + 1, MiB + 4095, 4 * MiB])
async def test_local_big_block_written_past_the_page_cache_is_exact(tmp_path: Path, size: int) -> None:
    """Big blocks go through protocol.directio (whole pages, padded): the file
    holds exactly the block, not its padding, and reads back the same."""
    s = FileBlockStore(tmp_path)
    data = os.urandom(size)
    x = h(data).hex()
    await s.put(h(data), data)
    assert (tmp_path / x[:2] / x).stat().st_size == size
    assert (tmp_path / x[:2] / x).read_bytes() == data
    assert await s.get(h(data)) == data
    assert list((tmp_path / "tmp").iterdir()) == []
    await s.close()


async def test_local_crash_leftover_temp_file_is_invisible_and_cleaned_on_reopen(tmp_path: Path) -> None:
    s = FileBlockStore(tmp_path)
    await s.check()
    data = block(9)
    # What a crash between write and rename leaves: a (maybe partial) temp file.
    leftover = tmp_path / "tmp" / f"deadbeefdeadbeef.{h(data).hex()[:16]}.1.0000.tmp"
    leftover.write_bytes(data[:500])
    assert not await s.has(h(data))
    assert await listed(s) == []
    with pytest.raises(BlockNotFound):
        await s.get(h(data))
    await s.close()

    reopened = FileBlockStore(tmp_path)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert await listed(reopened) == []
    await reopened.put(h(data), data)
    assert await reopened.get(h(data)) == data
    await reopened.close()


async def test_local_reopen_spares_temp_files_of_a_store_still_open(tmp_path: Path) -> None:
    a = FileBlockStore(tmp_path)
    in_flight = tmp_path / "tmp" / f"{a._token}.abcd.1.0000.tmp"
    in_flight.write_bytes(b"partial")
    b = FileBlockStore(tmp_path)
    assert in_flight.exists()
    await a.close()
    await b.close()


async def test_local_check_reports_unusable_root(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    s = FileBlockStore(not_a_dir)
    with pytest.raises(StoreUnavailable, match=str(not_a_dir)):
        await s.check()
    data = block(10)
    with pytest.raises(StoreUnavailable):
        await s.put(h(data), data)
    await s.close()


# -- S3 -------------------------------------------------------------------------------


async def test_s3_endpoint_down_fails_fast_with_a_clear_message() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    s = S3BlockStore("ferry-down", "", endpoint)
    data = block(11)
    started = time.monotonic()
    results = await asyncio.gather(s.check(), s.put(h(data), data), s.get(h(data)), return_exceptions=True)
    elapsed = time.monotonic() - started
    await s.close()
    assert elapsed < 15
    for r in results:
        assert isinstance(r, StoreUnavailable), r
        assert str(r).startswith(f"block store s3://ferry-down unreachable at {endpoint}: ")
        assert "\n" not in str(r)


async def test_s3_prefixes_are_isolated_and_foreign_keys_ignored(moto_endpoint: str) -> None:
    bucket = fresh_bucket()
    a = S3BlockStore(bucket, "a", moto_endpoint)
    b = S3BlockStore(bucket, "/b/", moto_endpoint)
    await a.check()
    await b.check()  # bucket exists already: fine
    da, db = block(12), block(13)
    await a.put(h(da), da)
    await b.put(h(db), db)
    assert await listed(a) == [h(da)]
    assert await listed(b) == [h(db)]
    assert not await a.has(h(db))
    client = await a._s3()
    await client.put_object(Bucket=bucket, Key="a/blocks/zz/not-a-block", Body=b"x")
    await client.put_object(Bucket=bucket, Key="a/blocks/readme.txt", Body=b"x")
    assert await listed(a) == [h(da)]
    assert (await client.head_object(Bucket=bucket, Key=f"a/blocks/{h(da).hex()[:2]}/{h(da).hex()}"))[
        "ContentLength"
    ] == len(da)
    await a.close()
    await b.close()


async def test_s3_iter_hashes_pages(moto_endpoint: str) -> None:
    s = S3BlockStore(fresh_bucket(), "", moto_endpoint, list_page_size=7)
    await s.check()
    calls = 0

    def count(**_: object) -> None:
        nonlocal calls
        calls += 1

    (await s._s3()).meta.events.register("before-send.s3.ListObjectsV2", count)
    blocks = [block(300 + i, 8) for i in range(30)]
    await asyncio.gather(*(s.put(h(b), b) for b in blocks))
    assert sorted(await listed(s)) == sorted(h(b) for b in blocks)
    assert calls == 5  # 30 keys at 7 a page
    await s.close()


# -- cache ----------------------------------------------------------------------------


class CountingStore:
    """A real FileBlockStore that counts the calls reaching it."""

    def __init__(self, root: Path) -> None:
        self.inner = FileBlockStore(root)
        self.gets = 0
        self.puts = 0
        self.hases = 0

    async def put(self, h: bytes, data: bytes | memoryview) -> None:
        self.puts += 1
        await self.inner.put(h, data)

    async def get(self, h: bytes) -> bytes:
        self.gets += 1
        return await self.inner.get(h)

    async def has(self, h: bytes) -> bool:
        self.hases += 1
        return await self.inner.has(h)

    async def delete(self, h: bytes) -> None:
        await self.inner.delete(h)

    def iter_hashes(self) -> AsyncIterator[bytes]:
        return self.inner.iter_hashes()

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.inner.close()


async def test_cache_get_is_served_from_memory(tmp_path: Path) -> None:
    inner = CountingStore(tmp_path)
    s = CachedBlockStore(inner, 10_000)
    data = block(14)
    await s.put(h(data), data)  # write-through caches it
    for _ in range(5):
        assert await s.get(h(data)) == data
    assert await s.has(h(data))
    assert (inner.puts, inner.gets, inner.hases) == (1, 0, 0)
    assert s.hits == 5

    # a block stored behind the cache's back is fetched once, then served from memory
    other = block(15)
    await inner.put(h(other), other)
    assert await s.get(h(other)) == other
    assert await s.get(h(other)) == other
    assert inner.gets == 1
    await s.close()


async def test_cache_keeps_an_uploads_view_of_its_frame_and_copies_a_view_of_a_mutable_buffer(
    tmp_path: Path,
) -> None:
    """A block put as part of an immutable frame is cached as that view (no
    copy) and read back as bytes; one put as a view of a buffer that may be
    reused is copied, so changing the buffer later changes nothing."""
    inner = CountingStore(tmp_path)
    s = CachedBlockStore(inner, 10_000)
    data = block(30)
    frame = b"header" + data
    await s.put(h(data), memoryview(frame)[6:])
    cached = await s.cache.get(h(data))
    assert isinstance(cached, memoryview) and cached.obj is frame
    got = await s.get(h(data))
    assert type(got) is bytes and got == data
    assert await s.cache.get(h(data)) is got  # the copy is kept: later reads copy nothing
    assert await s.get(h(data)) is got
    assert s.cache.total_bytes == len(data)

    other = block(31)
    buffer = bytearray(other)
    await s.put(h(other), memoryview(buffer))
    buffer[:] = bytes(len(buffer))  # the buffer is reused
    assert await s.get(h(other)) == other
    assert inner.gets == 0
    await s.close()


async def test_cache_lru_keeps_recently_read_block(tmp_path: Path) -> None:
    inner = CountingStore(tmp_path)
    s = CachedBlockStore(inner, 3000)
    a, b, c, d = (block(20 + i, 1000) for i in range(4))
    for x in (a, b, c):
        await s.put(h(x), x)
    assert await s.get(h(a)) == a  # a is now most recent; b is least
    await s.put(h(d), d)  # evicts b
    assert s.cache.keys_lru_first() == [h(c), h(a), h(d)]
    assert s.cache.total_bytes == 3000
    assert inner.gets == 0
    assert await s.get(h(a)) == a
    assert inner.gets == 0
    assert s.cache.keys_lru_first() == [h(c), h(d), h(a)]
    assert await s.get(h(b)) == b  # evicted: comes from the inner store (and evicts c)
    assert inner.gets == 1
    assert s.cache.keys_lru_first() == [h(d), h(a), h(b)]
    await s.close()


async def test_cache_skips_blocks_larger_than_the_cache(tmp_path: Path) -> None:
    inner = CountingStore(tmp_path)
    s = CachedBlockStore(inner, 1000)
    small, big = block(30, 400), block(31, 1001)
    await s.put(h(small), small)
    await s.put(h(big), big)
    assert s.cache.keys_lru_first() == [h(small)]
    assert await s.get(h(big)) == big
    assert await s.get(h(big)) == big
    assert inner.gets == 2
    assert s.cache.keys_lru_first() == [h(small)]
    await s.close()


async def test_cache_delete_removes_from_both_tiers(tmp_path: Path) -> None:
    inner = CountingStore(tmp_path)
    s = CachedBlockStore(inner, 10_000)
    data = block(32)
    await s.put(h(data), data)
    await s.delete(h(data))
    assert len(s.cache) == 0 and s.cache.total_bytes == 0
    assert not await s.has(h(data))
    assert not await inner.has(h(data))
    with pytest.raises(BlockNotFound):
        await s.get(h(data))
    await s.close()


async def test_cache_concurrent_misses_share_one_inner_read(tmp_path: Path) -> None:
    inner = CountingStore(tmp_path)
    s = CachedBlockStore(inner, 10_000)
    data = block(33)
    await inner.put(h(data), data)
    assert await asyncio.gather(*(s.get(h(data)) for _ in range(10))) == [data] * 10
    assert inner.gets == 1
    missing = h(b"missing")
    results = await asyncio.gather(*(s.get(missing) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, BlockNotFound) for r in results)
    assert inner.gets == 2
    await s.close()


POOL = [block(400 + i, size) for i, size in enumerate([0, 1, 50, 120, 199, 200, 333, 400, 64, 256])]
OPS = st.lists(
    st.tuples(st.sampled_from(["put", "get", "get", "delete"]), st.integers(0, len(POOL) - 1)),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_bytes=st.integers(0, 900), ops=OPS)
async def test_cache_bytes_bound_and_lru_order_under_random_ops(
    max_bytes: int, ops: list[tuple[str, int]]
) -> None:
    with tempfile.TemporaryDirectory() as root:
        inner = CountingStore(Path(root))
        s = CachedBlockStore(inner, max_bytes)
        model: OrderedDict[bytes, int] = OrderedDict()  # the LRU we expect: hash -> size
        stored: set[bytes] = set()

        def admit(key: bytes, size: int) -> None:
            model.pop(key, None)
            if size > max_bytes:
                return
            model[key] = size
            while sum(model.values()) > max_bytes:
                model.popitem(last=False)

        for op, i in ops:
            data = POOL[i]
            key = h(data)
            if op == "put":
                await s.put(key, data)
                stored.add(key)
                admit(key, len(data))
            elif op == "get":
                gets = inner.gets
                if key in stored:
                    assert await s.get(key) == data
                else:
                    with pytest.raises(BlockNotFound):
                        await s.get(key)
                if key in model:
                    model.move_to_end(key)
                    assert inner.gets == gets  # a hit never reaches the inner store
                else:
                    assert inner.gets == gets + 1
                    if key in stored:
                        admit(key, len(data))
            else:
                await s.delete(key)
                stored.discard(key)
                model.pop(key, None)
            cached = s.cache.keys_lru_first()
            assert s.cache.total_bytes <= max_bytes
            assert s.cache.total_bytes == sum(len(s.cache._cache[k]) for k in cached)
            assert cached == list(model)
        await s.close()


async def test_lru_memory_cache_is_an_aiocache_cache() -> None:
    c = LRUBytesMemoryCache(10)
    assert await c.set("a", b"12345")
    assert await c.add("b", b"678")
    with pytest.raises(ValueError):
        await c.add("b", b"x")
    assert await c.get("a") == b"12345"
    assert await c.set("c", b"xyz")  # 11 bytes > 10: evicts b, the least recently used
    assert await c.multi_get(["a", "b", "c"]) == [b"12345", None, b"xyz"]
    assert await c.set("huge", b"x" * 11) is False
    assert not await c.exists("huge")
    assert await c.delete("a") == 1
    assert c.total_bytes == 3
    await c.clear()
    assert c.total_bytes == 0 and len(c) == 0
    with pytest.raises(ValueError):
        await c.set("t", b"1", ttl=5)


# -- open_block_store -----------------------------------------------------------------


def test_open_block_store_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = open_block_store("file:rel/blocks", data_dir=Path("/nonexistent"))
    assert isinstance(s, FileBlockStore) and s.root == tmp_path / "rel" / "blocks"
    s = open_block_store(f"file://{tmp_path}/abs", data_dir=Path("/nonexistent"))
    assert isinstance(s, FileBlockStore) and s.root == tmp_path / "abs"
    s = open_block_store("file:", data_dir=tmp_path / "data")
    assert isinstance(s, FileBlockStore) and s.root == tmp_path / "data" / "blocks"

    s3 = open_block_store("s3://my-bucket/some/prefix/", data_dir=tmp_path, s3_endpoint="http://127.0.0.1:9")
    assert isinstance(s3, S3BlockStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("my-bucket", "some/prefix/", "http://127.0.0.1:9")
    assert isinstance(open_block_store("s3://my-bucket", data_dir=tmp_path), S3BlockStore)

    cached = open_block_store("file:c", data_dir=tmp_path, cache_bytes=1234)
    assert isinstance(cached, CachedBlockStore) and cached.max_bytes == 1234
    assert isinstance(cached.inner, FileBlockStore)

    for bad in ("gs://bucket", "/just/a/path", "s3://", "s3://Bad_Bucket"):
        with pytest.raises(ValueError, match="block store"):
            open_block_store(bad, data_dir=tmp_path)
    with pytest.raises(ValueError):
        open_block_store("file:x", data_dir=tmp_path, cache_bytes=-1)
