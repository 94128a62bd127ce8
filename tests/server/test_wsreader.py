"""The server's WebSocket read buffer (server.wsreader): exact bytes across
chunk boundaries, the HTTP head read by line first, EOF and errors as
asyncio's reader reports them, and memory bounded by pausing the socket."""

from __future__ import annotations

import asyncio
import os
import random
from typing import cast

import pytest

from server.wsreader import ChunkedStreamReader


async def _reader(limit: int = 1024) -> ChunkedStreamReader:
    return ChunkedStreamReader(limit=limit)


async def test_frames_cut_across_chunks_come_out_exactly() -> None:
    rng = random.Random(7)
    data = os.urandom(300_000)
    r = await _reader()
    r.feed_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + data[:10])  # the head and the first bytes of a frame
    assert await r.readline() == b"GET / HTTP/1.1\r\n"
    assert await r.readline() == b"Host: x\r\n"
    assert await r.readline() == b"\r\n"
    sizes = []
    left = len(data)
    while left:
        n = min(left, rng.choice([1, 2, 4, 8, 1000, 65_536, 100_000]))
        sizes.append(n)
        left -= n
    rest = memoryview(data)[10:]

    async def feed() -> None:
        pos = 0
        while pos < len(rest):
            n = rng.randint(1, 70_000)
            r.feed_data(bytes(rest[pos : pos + n]))
            pos += n
            await asyncio.sleep(0)
        r.feed_eof()

    feeder = asyncio.create_task(feed())
    got = [await r.readexactly(n) for n in sizes]
    await feeder
    assert [len(g) for g in got] == sizes
    assert all(type(g) is bytes for g in got)
    assert b"".join(got) == data
    assert r.at_eof()


async def test_a_frame_that_is_one_whole_chunk_is_handed_over_without_a_copy() -> None:
    r = await _reader()
    r.feed_data(b"\x82\x7e")
    assert await r.readexactly(2) == b"\x82\x7e"
    block = os.urandom(4096)
    r.feed_data(block)
    assert (await r.readexactly(4096)) is block


async def test_a_frame_ending_on_a_chunk_boundary_leaves_the_next_chunk_whole() -> None:
    r = await _reader()
    for chunk in (b"abc", b"def", b"ghi", b"jk"):
        r.feed_data(chunk)
    assert await r.readexactly(1) == b"a"
    assert await r.readexactly(5) == b"bcdef"  # the rest of one chunk and all of the next
    assert await r.readexactly(1) == b"g"
    assert await r.readexactly(2) == b"hi"  # the rest of a chunk, exactly
    assert await r.readexactly(2) == b"jk"


async def test_eof_in_the_middle_of_a_frame_reports_what_came() -> None:
    r = await _reader()
    r.feed_data(b"abc")
    assert await r.readexactly(1) == b"a"
    r.feed_data(b"def")
    r.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError) as e:
        await r.readexactly(10)
    assert e.value.partial == b"bcdef"
    assert e.value.expected == 10
    assert r.at_eof()


async def test_an_error_set_by_the_connection_is_raised_to_the_reader() -> None:
    r = await _reader()
    r.feed_data(b"ab")
    assert await r.readexactly(1) == b"a"
    waiting = asyncio.create_task(r.readexactly(5))
    await asyncio.sleep(0)
    r.set_exception(ConnectionResetError("peer reset"))
    with pytest.raises(ConnectionResetError):
        await waiting


async def test_line_reads_after_frames_began_are_refused() -> None:
    r = await _reader()
    r.feed_data(b"xy\n")
    assert await r.readexactly(1) == b"x"
    with pytest.raises(RuntimeError, match="only reads frames"):
        await r.readline()


async def test_a_line_longer_than_the_limit_is_refused() -> None:
    r = ChunkedStreamReader(limit=16)
    r.feed_data(b"GET /" + b"a" * 40)
    with pytest.raises(ValueError, match="longer than 16 bytes"):
        await r.readline()


async def test_a_line_split_over_chunks_and_a_last_line_without_newline_at_eof() -> None:
    r = await _reader()
    for chunk in (b"Hos", b"t: x\r", b"\nrest"):
        r.feed_data(chunk)
    r.feed_eof()
    assert await r.readline() == b"Host: x\r\n"
    assert await r.readline() == b"rest"
    assert await r.readline() == b""


class _Watched(ChunkedStreamReader):
    """Sets ``paused`` when the reader pauses its socket."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit=limit)
        self.paused = asyncio.Event()
        self.most = 0
        self.socket: asyncio.ReadTransport | None = None

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]
        super().feed_data(data)
        self.most = max(self.most, self._chunks.size)
        if self._paused:
            self.paused.set()


async def test_over_a_real_socket_it_pauses_when_unread_bytes_pass_its_limit_and_reads_a_frame_far_bigger() -> (
    None
):
    limit = 32 * 1024
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[_Watched] = loop.create_future()

    class Feeding(asyncio.Protocol):  # what a websockets connection does with its reader
        def __init__(self) -> None:
            self.reader = _Watched(limit)
            accepted.set_result(self.reader)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.reader.socket = cast(asyncio.ReadTransport, transport)
            self.reader.set_transport(transport)

        def data_received(self, data: bytes) -> None:
            self.reader.feed_data(data)

        def eof_received(self) -> None:
            self.reader.feed_eof()

    protocol = Feeding

    server = await loop.create_server(protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        reader = await accepted
        assert await reader.readexactly(0) == b""  # frames begin (nothing buffered yet)
        small = os.urandom(3 * limit)
        writer.write(small)  # nobody reads: the reader pauses the socket
        await asyncio.wait_for(reader.paused.wait(), 30)
        assert reader.socket is not None and not reader.socket.is_reading()
        big = os.urandom(4 * 1024 * 1024)  # a frame far bigger than the limit is still read whole
        writer.write(big)
        assert await reader.readexactly(len(small)) == small
        assert await reader.readexactly(len(big)) == big
        # while the big frame was awaited it held at most that frame plus a socket read
        assert reader.most <= len(big) + 512 * 1024
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
