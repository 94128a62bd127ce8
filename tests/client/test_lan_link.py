"""The peer link's framing over a real TLS connection on loopback: frames
arrive whole and in order through read pauses and write back-pressure, and a
bad frame ends the link with the decoder's error."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from pathlib import Path

import pytest
import uvloop

from client.lan.identity import client_context, load_identity
from client.lan.link import BLOCK_BUFFERS, Framed, PeerGone, listen
from protocol import framing
from protocol import messages as m
from protocol.errors import ProtocolError


async def pair(tmp_path: Path) -> tuple[Framed, asyncio.Future[Framed], asyncio.Server]:
    me = load_identity(tmp_path)
    served: asyncio.Future[Framed] = asyncio.get_running_loop().create_future()
    stay = asyncio.Event()

    async def on_link(framed: Framed) -> None:
        served.set_result(framed)
        await stay.wait()  # the test drives this end

    server = await listen(on_link, 0, me.server_context(), "127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    _, asker = await asyncio.get_running_loop().create_connection(
        Framed, "127.0.0.1", port, ssl=client_context(), server_hostname=None
    )
    return asker, served, server


def test_frames_arrive_whole_and_in_order_through_pauses(tmp_path: Path) -> None:
    blocks = [os.urandom(n) for n in (0, 1, 5, 65536, 1 << 20, 3 << 20)] * 4

    async def go() -> None:
        asker, served, server = await pair(tmp_path)
        serving = await served
        # 200 requests while nobody reads them: reading pauses at 16 and resumes
        for i in range(200):
            await asker.send(m.GetBlock(i, bytes(32)))
        while not serving._reading_paused:  # 16 frames are in: it stops reading
            await asyncio.sleep(0.01)
        got = [framing.decode(await serving.read()) for _ in range(200)]
        assert [g.id for g in got] == list(range(200))  # type: ignore[attr-defined]
        # ~17 MiB of blocks sent before any is read: the sender waits for room
        kept = BLOCK_BUFFERS.taken
        sending = asyncio.create_task(_send_all(serving, blocks))
        for i, data in enumerate(blocks):
            frame = await serving_read(asker)
            block = framing.decode_block(frame)
            assert (block.id, bytes(block.data)) == (i, data)
        await sending
        assert (
            BLOCK_BUFFERS.taken - kept >= 8
        )  # the big ones were read into reused buffers (as many as were free)
        await asker.close()
        with pytest.raises(PeerGone):
            await serving.read()  # the other end closed
        server.close()

    asyncio.run(asyncio.wait_for(go(), 30))


async def _send_all(framed: Framed, blocks: list[bytes]) -> None:
    for i, data in enumerate(blocks):
        await framed.send_block(i, bytes([i]) * 32, data)


async def serving_read(framed: Framed) -> bytearray | memoryview:
    frame = await framed.read()
    assert isinstance(frame, bytearray | memoryview)
    return frame


def test_a_frame_over_the_limit_ends_the_link_with_the_decoders_error(tmp_path: Path) -> None:
    async def go() -> None:
        asker, served, server = await pair(tmp_path)
        serving = await served
        assert asker.transport is not None
        asker.transport.write(bytes([1]) + (1 << 30).to_bytes(4, "big"))  # a 1 GiB binary frame announced
        with pytest.raises(ProtocolError, match="exceeds"):
            await serving.read()
        with pytest.raises(PeerGone):  # and the asker sees the link closed
            await asker.read()
        with pytest.raises(PeerGone):
            await asker.send(m.Ping(1))
        server.close()

    asyncio.run(asyncio.wait_for(go(), 30))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_port_in_use_raises_and_all_addresses_are_served(tmp_path: Path, loop: str) -> None:
    """uvloop only logs a failed listen() and hands back a server without a
    socket; ``listen`` must raise instead, so the node can take another port."""
    me = load_identity(tmp_path)

    async def on_link(framed: Framed) -> None:
        await framed.close()

    async def go() -> None:
        first = await listen(on_link, 0, me.server_context())  # every address
        port = first.sockets[0].getsockname()[1]
        with pytest.raises(OSError) as raised:
            await listen(on_link, port, me.server_context())
        assert raised.value.errno == errno.EADDRINUSE
        for host in ["127.0.0.1", *(["::1"] if socket.has_dualstack_ipv6() else [])]:
            _, asker = await asyncio.get_running_loop().create_connection(
                Framed, host, port, ssl=client_context(), server_hostname=None
            )
            with pytest.raises(PeerGone):  # reached the server, which closed it
                await asker.read()
        first.close()

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(go(), 30))
