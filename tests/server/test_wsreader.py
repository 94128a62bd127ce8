"""The server's WebSocket read buffer (server.wsreader): exact bytes across
chunk boundaries, the HTTP head read by line first, EOF and errors as
asyncio's reader reports them, and memory bounded by pausing the socket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
from collections.abc import Callable
from typing import Any, cast

import pytest
import uvicorn
import uvloop
from websockets.asyncio.client import connect as ws_connect

from server.bounds import ShortCloseProtocol, head_timeout_protocol
from server.wsreader import KEPT_FLOOR, ChunkedStreamReader, buffers


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


async def test_a_big_frame_is_read_into_a_buffer_of_its_own_and_eof_inside_one_reports_what_came() -> None:
    r = await _reader()

    def arrive(data: bytes) -> None:  # what a buffered transport does with what the socket gives it
        view = memoryview(data)
        while view:
            buf = r.get_buffer(-1)
            assert len(buf) > 0
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            r.buffer_updated(n)
            view = view[n:]

    payload = os.urandom(1 << 20)
    arrive(b"\x82\x7f" + len(payload).to_bytes(8, "big") + payload[:1000])
    assert await r.readexactly(2) == b"\x82\x7f"
    assert await r.readexactly(8) == len(payload).to_bytes(8, "big")
    taken = buffers.taken
    reading = asyncio.create_task(r.readexactly(len(payload)))
    await asyncio.sleep(0)  # it waits for the rest of the frame
    arrive(payload[1000:] + b"\x82\x05")  # the rest of it, and the next frame's head
    got = await reading
    assert buffers.taken == taken + 1  # read into a buffer of its own...
    assert bytes(got) == payload  # ...exactly
    assert await r.readexactly(2) == b"\x82\x05"
    reading = asyncio.create_task(r.readexactly(len(payload)))
    await asyncio.sleep(0)
    arrive(payload[:300_000])
    r.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError) as e:
        await reading
    assert e.value.partial == payload[:300_000] and e.value.expected == len(payload)

    r = await _reader()  # the connection ends inside a big frame before anyone reads it again
    arrive(b"\x82\x7f")
    assert await r.readexactly(2) == b"\x82\x7f"
    reading = asyncio.create_task(r.readexactly(len(payload)))
    await asyncio.sleep(0)
    arrive(payload[:200_000])
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    r.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError) as e:
        await r.readexactly(len(payload))
    assert e.value.partial == payload[:200_000]


@pytest.mark.parametrize(
    "loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"]
)
def test_the_server_protocol_reads_big_frames_straight_into_their_buffers(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """uvicorn with the server's own protocols, a real socket, and messages of
    every length form: each arrives whole, and the big ones were read from the
    socket into buffers of their own (the transport was switched to buffered
    reads after the upgrade)."""
    sizes = [0, 1, 125, 126, 65_535, 65_536, 200_000, 1 << 20, 4 << 20, (4 << 20) + 5, 7 << 20, 3, 4 << 20]
    sent = [os.urandom(n) for n in sizes]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        while (msg := await receive())["type"] == "websocket.receive":
            data = msg["bytes"]
            await send(
                {
                    "type": "websocket.send",
                    "bytes": hashlib.sha256(data).digest() + len(data).to_bytes(8, "big"),
                }
            )

    async def main() -> list[bytes]:
        sock = socket.create_server(("127.0.0.1", 0))
        config = uvicorn.Config(app, loop="none", http=head_timeout_protocol(10.0), ws=ShortCloseProtocol,
                                ws_max_size=16 << 20, ws_ping_interval=None, lifespan="off", log_level="warning")  # fmt: skip
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            port = sock.getsockname()[1]
            async with ws_connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
                replies = []
                for data in sent:
                    await ws.send(data)
                    replies.append(await ws.recv())
                return replies  # type: ignore[return-value]
        finally:
            server.should_exit = True
            await serving

    before = buffers.taken
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        replies = runner.run(main())
    assert [int.from_bytes(r[32:], "big") for r in replies] == sizes
    assert [r[:32] for r in replies] == [hashlib.sha256(d).digest() for d in sent]
    # the block-sized ones were read into buffers of their own (the 7 MiB one through the chunks)
    assert buffers.taken - before >= sum(1 for n in sizes if 1 << 20 <= n <= KEPT_FLOOR)
