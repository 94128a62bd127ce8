"""The mobile SDK against a real `ferry server` (real PostgreSQL). The SDK's
HTTP goes through :class:`Wire`, the real network with a switch (offline)
and a log of every request, so tests count what actually crossed it."""

from __future__ import annotations

import asyncio
import io
import random
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mobile_sdk import ApiError, Client, NotLoggedIn, OfflineError, SyncClient
from mobile_sdk.transport import retry_delay
from protocol.chunking import chunk_bytes
from tests.e2e.api_support import add_user, api, api_server, token_for, upload
from tests.support.servers import FerryServer

__all__ = ["api_server"]
KIB = 1024


class Wire(httpx.AsyncBaseTransport):
    """The real network, with a switch and counters: ``online = False`` is a
    phone in airplane mode; ``drop_after_puts = n`` lets n block uploads
    through and then cuts every request mid-send, until ``heal()``."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.online = True
        self.drop_after_puts: int | None = None
        self.log: list[tuple[str, str, int, int]] = []  # method, path, bytes sent, bytes received
        self.script: list[httpx.Response] = []  # canned answers to give first (503s, 429s...)

    def heal(self) -> None:
        self.drop_after_puts = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.online:
            raise httpx.ConnectError("network is unreachable", request=request)
        if self.script:
            return self.script.pop(0)
        if request.method == "PUT" and self.drop_after_puts is not None:
            if self.drop_after_puts <= 0:
                raise httpx.WriteError("connection reset by peer", request=request)
            self.drop_after_puts -= 1
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        self.log.append((request.method, request.url.path, len(request.content), len(body)))
        return httpx.Response(response.status_code, headers=response.headers, content=body, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def block_gets(self) -> list[int]:
        return [
            got for method, path, _, got in self.log if method == "GET" and path.startswith("/api/v1/blocks/")
        ]

    def block_puts(self) -> list[int]:
        return [sent for method, path, sent, _ in self.log if method == "PUT"]


async def phone(server: FerryServer, home: Path, wire: Wire, user: str | None = None, **kw: object) -> Client:
    client = Client(server.url, home, transport=wire, retries=1, backoff=0.01, **kw)  # type: ignore[arg-type]
    if user is not None:
        await client.login(user, "pw")
    return client


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def test_browse_and_metadata_only_changes(api_server: FerryServer, tmp_path: Path) -> None:
    user, wire = await add_user(api_server), Wire()
    async with await phone(api_server, tmp_path / "home", wire, user) as c:
        for name in ("b.txt", "a.txt"):
            (tmp_path / name).write_bytes(name.encode() * 1000)
            await c.upload(tmp_path / name, f"/docs/{name}")
        assert [e.path for e in await c.list("/docs")] == ["/docs/a.txt", "/docs/b.txt"]
        assert (await c.stat("/docs/a.txt")).size == 5000
        wire.log.clear()
        changed = await c.changes()
        assert [e.path for e in changed] == ["/docs", "/docs/b.txt", "/docs/a.txt"]
        assert changed[1].blocks and not wire.block_gets()  # metadata only: no file bytes moved
        assert await c.changes() == []
        await c.upload(tmp_path / "a.txt", "/docs/c.txt")
        assert [e.path for e in await c.changes()] == ["/docs/c.txt"]
        with pytest.raises(ApiError) as e:
            await c.stat("/nope")
        assert e.value.status == 404 and e.value.code == "not_found"
        await c.mkdir("/empty/inner")
        assert (await c.move("/docs", "/papers")).path == "/papers"
        assert (await c.delete("/empty")).deleted
        assert [e.path for e in await c.list("/")] == ["/papers"]
        assert [e.path for e in await c.list("/papers")] == [
            "/papers/a.txt",
            "/papers/b.txt",
            "/papers/c.txt",
        ]


async def test_lazy_reads_fetch_only_the_blocks_they_cover(api_server: FerryServer, tmp_path: Path) -> None:
    user, wire = await add_user(api_server), Wire()
    data = blob(12 * 1024 * KIB, 11)
    blocks = chunk_bytes(data)
    async with await phone(api_server, tmp_path / "home", wire, user) as c:
        (tmp_path / "video.mp4").write_bytes(data)
        await c.upload(tmp_path / "video.mp4", "/video.mp4")
        assert len(blocks) >= 6
        f = await c.open("/video.mp4")
        wire.log.clear()
        f.seek(-1024, io.SEEK_END)
        assert await f.read() == data[-1024:]
        assert wire.block_gets() == [blocks[-1].length]  # the last 1 KiB cost exactly the last block
        straddle = blocks[2].offset + blocks[2].length - 100
        assert await f.pread(straddle, 200) == data[straddle : straddle + 200]
        assert wire.block_gets()[1:] == [blocks[2].length, blocks[3].length]
        wire.log.clear()
        assert await f.pread(straddle, 200) == data[straddle : straddle + 200]  # now from the cache
        assert await f.pread(len(data) - 10, 10) == data[-10:]
        assert wire.block_gets() == []
        assert await f.pread(len(data), 10) == b""


async def test_cache_evicts_least_recently_used_within_its_byte_bound(
    api_server: FerryServer, tmp_path: Path
) -> None:
    user, wire = await add_user(api_server), Wire()
    files = {name: blob(100 * KIB, i) for i, name in enumerate("abcde")}
    home = tmp_path / "home"
    async with await phone(api_server, home, wire, user, cache_bytes=350 * KIB) as c:
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            await c.upload(tmp_path / name, f"/{name}")
        hashes = {name: chunk_bytes(data)[0].hash for name, data in files.items()}

        async def read(name: str) -> None:
            assert await (await c.open(f"/{name}")).read() == files[name]
            assert c.cache.unpinned_bytes() <= 350 * KIB

        for name in ("a", "b", "c", "a", "d"):  # a used again: b is now the oldest
            await read(name)
        assert c.cache.lru_order() == [hashes[n] for n in ("c", "a", "d")]
        await read("e")
        assert c.cache.lru_order() == [hashes[n] for n in ("a", "d", "e")]
    wire.online = False  # the order, the bound and the bytes survive a restart, offline
    async with await phone(api_server, home, wire, cache_bytes=350 * KIB) as c:
        assert c.cache.lru_order() == [hashes[n] for n in ("a", "d", "e")]
        assert await (await c.open("/a")).read() == files["a"]
        with pytest.raises(OfflineError):
            await (await c.open("/b")).read()  # evicted, and the network is gone


async def test_pinned_files_survive_eviction_restarts_and_follow_changes(
    api_server: FerryServer, tmp_path: Path
) -> None:
    user, wire = await add_user(api_server), Wire()
    home = tmp_path / "home"
    async with await phone(api_server, home, wire, user, cache_bytes=250 * KIB) as c:
        (tmp_path / "p").write_bytes(blob(200 * KIB, 1))
        await c.upload(tmp_path / "p", "/boarding-pass.pdf")
        await c.pin("/boarding-pass.pdf")
        for i in range(4):  # far more than the bound passes through the cache
            (tmp_path / f"x{i}").write_bytes(blob(200 * KIB, 10 + i))
            await c.upload(tmp_path / f"x{i}", f"/x{i}")
            await (await c.open(f"/x{i}")).read()
        assert c.cache.unpinned_bytes() <= 250 * KIB
        assert c.pinned() == ["/boarding-pass.pdf"]
        await c.changes()
        # another device changes the pinned file; the phone's next changes() refreshes it
        async with api(api_server, await token_for(api_server, user, "laptop")) as laptop:
            version = (await c.stat("/boarding-pass.pdf")).version
            await upload(laptop, "/boarding-pass.pdf", b"new gate: B12", parent=version)
        await c.changes()
    wire.online = False
    async with await phone(api_server, home, wire, cache_bytes=250 * KIB) as c:
        assert await (await c.open("/boarding-pass.pdf")).read() == b"new gate: B12"
        with pytest.raises(OfflineError):
            await c.list("/")
        wire.online = True
        await c.unpin("/boarding-pass.pdf")
        assert c.pinned() == []


async def test_offline_open_of_cached_files_and_damaged_cache_blocks(
    api_server: FerryServer, tmp_path: Path
) -> None:
    user, wire = await add_user(api_server), Wire()
    data = blob(50 * KIB, 5)
    async with await phone(api_server, tmp_path / "home", wire, user) as c:
        (tmp_path / "n").write_bytes(data)
        await c.upload(tmp_path / "n", "/notes.txt")
        await c.upload(tmp_path / "n", "/never-opened.txt")
        assert await (await c.open("/notes.txt")).read() == data
        # a damaged cache file is never returned: it is dropped and fetched again
        (h,) = [b.hash for b in chunk_bytes(data)]
        c.cache._path(h).write_bytes(b"bit rot")
        wire.log.clear()
        assert await (await c.open("/notes.txt")).read() == data
        assert len(wire.block_gets()) == 1
        wire.online = False
        assert await (await c.open("/notes.txt")).read() == data
        with pytest.raises(OfflineError):
            await c.open("/never-opened.txt")
        with pytest.raises(OfflineError):
            await c.changes()
        c.cache._path(h).write_bytes(b"bit rot")  # damaged while offline: an error, not wrong bytes
        with pytest.raises(OfflineError):
            await (await c.open("/notes.txt")).read()


async def test_wait_for_changes_wakes_within_200ms(api_server: FerryServer, tmp_path: Path) -> None:
    user, wire = await add_user(api_server), Wire()
    async with (
        await phone(api_server, tmp_path / "home", wire, user) as c,
        api(api_server, await token_for(api_server, user, "laptop")) as laptop,
    ):
        assert await c.wait_for_changes(timeout=1) is False
        waiting = asyncio.create_task(c.wait_for_changes(timeout=30))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await upload(laptop, "/from-laptop.txt", b"hi")
        committed = time.monotonic()
        assert await waiting is True
        assert time.monotonic() - committed < 0.2
        assert [e.path for e in await c.changes()] == ["/from-laptop.txt"]


async def test_upload_resumes_after_a_network_drop(
    api_server: FerryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mobile_sdk.upload.PARALLEL_PUTS", 1)  # so "the first 3 blocks arrived" is exact
    user, wire = await add_user(api_server), Wire()
    data = blob(8 * 1024 * KIB, 21)
    blocks = chunk_bytes(data)
    (tmp_path / "movie").write_bytes(data)
    home = tmp_path / "home"
    async with await phone(api_server, home, wire, user) as c:
        wire.drop_after_puts = 3
        with pytest.raises(OfflineError):
            await c.upload(tmp_path / "movie", "/movie.mov")
    sent_before = sum(wire.block_puts())
    assert 0 < sent_before < len(data)
    wire.heal()
    wire.log.clear()
    async with await phone(api_server, home, wire) as c:  # the app restarted
        entry = await c.upload(tmp_path / "movie", "/movie.mov")
        resent = wire.block_puts()
        assert len(resent) == len(blocks) - 3 and sum(resent) + sent_before == len(data)
        assert entry.size == len(data)
        await c.download("/movie.mov", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
        assert len(await c.history("/movie.mov")) == 1


async def test_retries_honour_retry_after_and_give_up_offline(
    api_server: FerryServer, tmp_path: Path
) -> None:
    user, wire = await add_user(api_server), Wire()
    async with await phone(api_server, tmp_path / "home", wire, user) as c:
        wire.script = [
            httpx.Response(503, headers={"Retry-After": "1"}, json={"code": "unavailable", "message": "db"})
        ]
        started = time.monotonic()
        assert await c.list("/") == []
        assert time.monotonic() - started >= 1.0 and c.stats.retries == 1
        wire.script = [httpx.Response(429, json={"code": "busy", "message": "slow down"})] * 2
        with pytest.raises(ApiError) as e:  # retries=1: the second 429 is the answer
            await c.list("/")
        assert e.value.status == 429
    async with Client(
        "http://127.0.0.1:9", tmp_path / "home"
    ) as other:  # a token goes only to its own server
        with pytest.raises(NotLoggedIn):
            await other.list("/")
    for attempt in range(8):
        assert 0 <= retry_delay(attempt, None, 0.2, 10.0) <= min(10.0, 0.2 * 2**attempt)
    assert retry_delay(0, "7", 0.2, 10.0) >= 7.0 and retry_delay(0, "3600", 0.2, 10.0) == 60.0


async def test_thumbnails_history_restore_and_sync_wrapper(api_server: FerryServer, tmp_path: Path) -> None:
    user, wire = await add_user(api_server), Wire()
    img = io.BytesIO()
    Image.new("RGB", (1600, 1200), "orange").save(img, "PNG")
    (tmp_path / "photo.png").write_bytes(img.getvalue())
    async with await phone(api_server, tmp_path / "home", wire, user) as c:
        await c.upload(tmp_path / "photo.png", "/photo.png")
        assert Image.open(io.BytesIO(await c.thumbnail("/photo.png", 64))).size == (64, 48)
        with pytest.raises(ValueError):
            await c.thumbnail("/photo.png", 100)
        (tmp_path / "v").write_bytes(b"one")
        first = await c.upload(tmp_path / "v", "/v.txt")
        (tmp_path / "v").write_bytes(b"two!")
        await c.upload(tmp_path / "v", "/v.txt")
        assert [v.entry.size for v in await c.history("/v.txt")] == [4, 3]
        assert (await c.restore("/v.txt", first.version)).size == 3
    sync = await asyncio.to_thread(SyncClient, api_server.url, tmp_path / "home")
    try:
        f = await asyncio.to_thread(sync.open, "/v.txt")
        assert await asyncio.to_thread(io.BufferedReader(f).read) == b"one"
        assert [e.path for e in await asyncio.to_thread(sync.list, "/")] == ["/photo.png", "/v.txt"]
    finally:
        await asyncio.to_thread(sync.close)


async def test_logout_revokes_the_token_and_forgets_it(api_server: FerryServer, tmp_path: Path) -> None:
    user, wire = await add_user(api_server), Wire()
    async with await phone(api_server, tmp_path / "home", wire, user) as c:
        token = c.t.token
        assert await c.list("/") == []
        await c.logout()
        with pytest.raises(NotLoggedIn):
            await c.list("/")
    async with Client(api_server.url, tmp_path / "home") as again:  # forgotten on disk too
        with pytest.raises(NotLoggedIn):
            await again.list("/")
        again.t.token = token  # the old token itself is refused by the server
        with pytest.raises(ApiError) as e:
            await again.list("/")
        assert e.value.status == 401
        await again.logout()  # already revoked: only forgotten here
        assert again.t.token is None
    sync = await asyncio.to_thread(SyncClient, api_server.url, tmp_path / "blocking")
    try:
        await asyncio.to_thread(sync.login, user, "pw")
        assert await asyncio.to_thread(sync.list, "/") == []
        await asyncio.to_thread(sync.logout)
        with pytest.raises(NotLoggedIn):
            await asyncio.to_thread(sync.list, "/")
    finally:
        await asyncio.to_thread(sync.close)
