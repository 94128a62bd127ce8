"""A byte-bounded LRU memory tier in front of any block store.

:class:`LRUBytesMemoryCache` is aiocache's ``SimpleMemoryCache`` with a bound:
the total length of the cached values never exceeds ``max_bytes``; inserting
evicts least-recently-used entries, and a hit refreshes recency. (Stock
``SimpleMemoryCache`` grows without limit.) TTLs are not supported.

:class:`CachedBlockStore` writes through to the inner store, then caches;
reads try memory first, then the inner store (concurrent misses on one block
share a single inner read) and cache the result. Blocks are immutable, so the
only invalidation is ``delete``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from aiocache import SimpleMemoryCache

from server.blockstore import BlockStore, check_hash

__all__ = ["CachedBlockStore", "LRUBytesMemoryCache"]


class LRUBytesMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
    """aiocache memory cache bounded by the total ``len()`` of its (bytes-like) values.

    A value longer than ``max_bytes`` is not stored (``set`` returns False and
    drops any older value under that key). Operations never await, so each is
    atomic on the event loop. aiocache's per-call timeout defaults to off here:
    every operation is a dict access.
    """

    def __init__(self, max_bytes: int, *, timeout: float | None = None, **kwargs: Any) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        super().__init__(timeout=timeout, **kwargs)
        self.max_bytes = max_bytes
        self._cache: OrderedDict[Any, Any] = OrderedDict()
        self._bytes = 0

    @property
    def total_bytes(self) -> int:
        """Sum of the lengths of the cached values (always <= max_bytes)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._cache)

    def keys_lru_first(self) -> list[Any]:
        """Cached keys, least recently used first (for tests and introspection)."""
        return list(self._cache)

    def _touch(self, key: Any) -> Any:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    def _drop(self, key: Any) -> int:
        value = self._cache.pop(key, None)
        if value is None:
            return 0
        self._bytes -= len(value)
        return 1

    async def _get(self, key: Any, encoding: str | None = "utf-8", _conn: Any = None) -> Any:
        return self._touch(key)

    async def _gets(self, key: Any, encoding: str | None = "utf-8", _conn: Any = None) -> Any:
        return self._touch(key)

    async def _multi_get(self, keys: Any, encoding: str | None = "utf-8", _conn: Any = None) -> list[Any]:
        return [self._touch(k) for k in keys]

    async def _set(
        self, key: Any, value: Any, ttl: Any = None, _cas_token: Any = None, _conn: Any = None
    ) -> bool | int:
        if ttl:
            raise ValueError("LRUBytesMemoryCache does not support TTLs")
        if _cas_token is not None and _cas_token != self._cache.get(key):
            return 0
        size = len(value)
        self._drop(key)
        if size > self.max_bytes:
            return False
        self._cache[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._cache.popitem(last=False)
            self._bytes -= len(old)
        return True

    async def _increment(self, key: Any, delta: int, _conn: Any = None) -> int:
        raise TypeError("LRUBytesMemoryCache holds bytes; increment is not supported")

    async def _expire(self, key: Any, ttl: Any, _conn: Any = None) -> bool:
        if ttl:
            raise ValueError("LRUBytesMemoryCache does not support TTLs")
        return key in self._cache

    async def _delete(self, key: Any, _conn: Any = None) -> int:
        return self._drop(key)

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        if namespace:
            for key in [k for k in self._cache if isinstance(k, str) and k.startswith(namespace)]:
                self._drop(key)
        else:
            self._cache.clear()
            self._bytes = 0
        return True

    async def _raw(
        self, command: str, *args: Any, encoding: str | None = "utf-8", _conn: Any = None, **kwargs: Any
    ) -> Any:
        raise NotImplementedError("raw access would bypass the byte accounting")

    async def _redlock_release(self, key: Any, value: Any) -> int:
        if self._cache.get(key) == value:
            return self._drop(key)
        return 0


def _immutable(data: bytes | memoryview) -> bytes | memoryview:
    """``data`` itself if it cannot change (bytes, or a view of bytes, such as
    a block's part of the frame it was uploaded in: most uploaded blocks are
    never read back from memory, so they are not copied), else a copy."""
    if isinstance(data, bytes) or (isinstance(data, memoryview) and isinstance(data.obj, bytes)):
        return data
    return bytes(data)


class CachedBlockStore:
    """``inner`` with its hot blocks held in at most ``max_bytes`` of memory."""

    def __init__(self, inner: BlockStore, max_bytes: int) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self.cache = LRUBytesMemoryCache(max_bytes)
        self.hits = 0
        self.misses = 0
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}
        self._deletes = 0  # bumped by delete(), so a read racing a delete does not re-cache

    def __repr__(self) -> str:
        return f"CachedBlockStore({self.inner!r}, max_bytes={self.max_bytes})"

    @property
    def url(self) -> str:
        return str(getattr(self.inner, "url", repr(self.inner)))

    async def _cache_put(self, h: bytes, data: bytes | memoryview) -> None:
        if len(data) <= self.max_bytes:
            await self.cache.set(h, data)

    async def _fetch(self, h: bytes) -> bytes:
        epoch = self._deletes
        data = await self.inner.get(h)
        if epoch == self._deletes:
            await self._cache_put(h, data)
        return data

    async def put(self, h: bytes, data: bytes | memoryview) -> None:
        epoch = self._deletes
        await self.inner.put(h, data)
        if len(data) <= self.max_bytes and epoch == self._deletes:
            await self._cache_put(h, _immutable(data))

    async def get(self, h: bytes) -> bytes:
        check_hash(h)
        data = await self.cache.get(h)
        if data is not None:
            self.hits += 1
            if not isinstance(data, bytes):  # cached as a view of an upload's frame: copied once, when wanted
                data = bytes(data)
                await self.cache.set(h, data)
            return data
        self.misses += 1
        fut = self._inflight.get(h)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(h))
            self._inflight[h] = fut
            fut.add_done_callback(lambda f: self._fetch_done(h, f))
        # shield: one reader being cancelled must not cancel the read others wait on
        return await asyncio.shield(fut)

    def _fetch_done(self, h: bytes, fut: asyncio.Future[bytes]) -> None:
        if self._inflight.get(h) is fut:
            del self._inflight[h]
        if not fut.cancelled():
            fut.exception()  # mark retrieved even if every waiter was cancelled

    async def has(self, h: bytes) -> bool:
        check_hash(h)
        if await self.cache.exists(h):
            return True
        return await self.inner.has(h)

    async def delete(self, h: bytes) -> None:
        check_hash(h)
        self._deletes += 1
        await self.cache.delete(h)
        try:
            await self.inner.delete(h)
        finally:
            await self.cache.delete(h)

    def iter_hashes(self) -> AsyncIterator[bytes]:
        return self.inner.iter_hashes()

    async def check(self) -> None:
        await self.inner.check()

    async def close(self) -> None:
        await self.cache.clear()
        await self.inner.close()
