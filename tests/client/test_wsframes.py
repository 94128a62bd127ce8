"""The client's WebSocket frames (client.wsframes): frames of every size come
through a real connection intact both ways, the reader keeps websockets'
contract (lines, exact reads, EOF and length errors), and a message sent in
parts is one masked frame a real websockets server accepts."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Generator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from client.wsframes import JOIN_UNDER, FrameConnection, FrameReader, masked_frame


def _run(gen: Generator[None, None, Any], reader: FrameReader, feed: list[bytes]) -> Any:
    """Drive a reader coroutine, feeding one chunk each time it waits."""
    feed = list(feed)
    try:
        next(gen)
        while True:
            if feed:
                reader.feed_data(feed.pop(0))
            else:
                reader.feed_eof()
            next(gen)
    except StopIteration as done:
        return done.value


def test_lines_and_exact_reads_across_chunks() -> None:
    r = FrameReader()
    assert _run(r.read_line(100), r, [b"HTTP/1.1 1", b"01 Switching\r", b"\nUpgrade: websocket\r\n"]) == (
        b"HTTP/1.1 101 Switching\r\n"
    )
    assert _run(r.read_line(100), r, []) == b"Upgrade: websocket\r\n"
    r = FrameReader()
    assert _run(r.read_exact(3), r, [b"a", b"bc"]) == b"abc"
    assert _run(r.read_exact(3), r, [b"defg"]) == b"def"
    assert _run(r.read_exact(1), r, []) == b"g"
    assert _run(r.read_exact(0), r, []) == b""


def test_errors_are_websockets_errors() -> None:
    r = FrameReader()
    with pytest.raises(RuntimeError, match="expected no more than 8 bytes"):
        _run(r.read_line(8), r, [b"a line that never ends"])
    r = FrameReader()
    with pytest.raises(EOFError, match="stream ends after 2 bytes, expected 5 bytes"):
        _run(r.read_exact(5), r, [b"ab"])
    r = FrameReader()
    assert _run(r.read_to_eof(10), r, [b"body", b"!"]) == b"body!"
    r.discard()
    assert _run(r.at_eof(), r, []) is True
    with pytest.raises(EOFError, match="stream ended"):
        r.feed_data(b"late")


async def test_frames_big_and_small_arrive_intact_through_a_real_connection() -> None:
    sizes = [0, 1, 125, 126, 65_535, 65_536, 300_000, 4 * 1024 * 1024 + 3]
    payloads = [os.urandom(n) for n in sizes]

    async def handler(ws: ServerConnection) -> None:
        for p in payloads:
            await ws.send(p)
        await ws.send("done")
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=FrameConnection, max_size=None) as ws:
            assert isinstance(ws.protocol.reader, FrameReader)
            got = [await ws.recv() for _ in payloads]
            assert await ws.recv() == "done"
    assert all(type(g) is bytes for g in got)
    assert [len(g) for g in got] == sizes
    assert got == payloads


async def test_a_closing_server_is_seen_as_closed() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(4000, "going away")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=FrameConnection) as ws:
            await asyncio.wait_for(ws.wait_closed(), 30)
            assert ws.close_code == 4000
            assert ws.close_reason == "going away"


async def test_messages_sent_in_parts_arrive_joined_at_a_real_server() -> None:
    """Lengths on both sides of the 7-, 16- and 64-bit length forms, and parts
    whose boundaries fall anywhere in the 4-byte mask."""
    cases = [
        (b"", b""),
        (b"h", b""),
        (b"header", b"x" * 119),
        (b"head", b"y" * 122),
        (os.urandom(40), os.urandom(65_495)),
        (os.urandom(41), os.urandom(65_495)),
        (os.urandom(3), os.urandom(300_001), os.urandom(5)),
        (os.urandom(40), os.urandom(4 * 1024 * 1024)),
    ]
    got: list[bytes] = []

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            got.append(message if isinstance(message, bytes) else message.encode())
            await ws.send("ok")

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=FrameConnection, max_size=None) as ws:
            assert isinstance(ws, FrameConnection)
            for parts in cases:
                await ws.send_parts(*(memoryview(p) for p in parts))
                assert await ws.recv() == "ok"
            await ws.send(b"and an ordinary message after them")
            assert await ws.recv() == "ok"
    assert got == [b"".join(parts) for parts in cases] + [b"and an ordinary message after them"]


def test_a_masked_frame_is_its_parts_under_one_mask() -> None:
    parts = (b"abc", b"defgh", b"ij")
    frame = b"".join(masked_frame(parts))
    head = frame[:6]
    assert head[0] == 0x82 and head[1] == 0x80 | 10  # final binary frame, masked, 10 bytes
    mask = head[2:6]
    payload = frame[6:]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) == b"abcdefghij"
    assert masked_frame(parts)[0][2:6] != mask  # a new mask each time (equal once in 2**32)
    assert all(masked_frame((b"ab", b"", memoryview(b""), b"c"))[1:])  # no empty piece: that would mean EOF
    big = (os.urandom(40), b"", os.urandom(JOIN_UNDER))
    pieces = masked_frame(big)
    assert len(pieces) == 3 and all(pieces)  # a big message: head, then each non-empty part masked
