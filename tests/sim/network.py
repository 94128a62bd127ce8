"""The simulated network between each client and the :class:`SimServer`.

A :class:`Link` stands in for :class:`client.transport.Connection` (same
``call``, ``put_block``, ``get_block``, ``close`` and callbacks). Every frame
is really encoded, travels with a random delay (so concurrent requests and
their replies reorder), and may be dropped (the connection then dies, as a
WebSocket does: a dropped reply means the server did the change and the
client never heard), duplicated (the server sees the request twice), or cut
by a disconnect. A device can be taken offline: its link dies and dialing
fails until it is back. Every choice comes from the seeded ``random.Random``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from client.transport import ConnectionLost
from protocol import framing
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from tests.sim.server import SimServer


@dataclass
class Faults:
    drop: float = 0.0  # per frame
    duplicate: float = 0.0  # per request
    disconnect: float = 0.0  # per request: the link dies while it is in flight
    max_delay: float = 0.05  # s, per frame

    @classmethod
    def random(cls, rng: random.Random) -> Faults:
        if rng.random() < 0.3:
            return cls(max_delay=rng.choice([0.0, 0.01, 0.2]))
        return cls(
            drop=rng.choice([0.0, 0.01, 0.03]),
            duplicate=rng.choice([0.0, 0.05, 0.2]),
            disconnect=rng.choice([0.0, 0.01, 0.03]),
            max_delay=rng.choice([0.001, 0.05, 0.5]),
        )


class Network:
    def __init__(self, server: SimServer, rng: random.Random, faults: Faults) -> None:
        self.server = server
        self.rng = rng
        self.faults = faults
        self.offline: set[str] = set()
        self.links: list[Link] = []
        self.frames = 0
        server.on_change = self._changed
        server.on_namespaces = self._namespaces

    def _changed(self, ns: int, seq: int) -> None:
        for link in list(self.links):
            link.push(m.Changed(ns, seq))

    def _namespaces(self) -> None:
        for link in list(self.links):
            link.push(m.NamespacesChanged(self.server.namespaces()))

    def dialer(self, device: str) -> Callable[[], Any]:
        async def dial() -> Link:
            await asyncio.sleep(self.rng.uniform(0, 0.01))
            if device in self.offline:
                raise ConnectionLost(f"{device} is offline")
            link = Link(self, device)
            self.links.append(link)
            return link

        return dial

    def go_offline(self, device: str) -> None:
        self.offline.add(device)
        for link in [k for k in self.links if k.device == device]:
            link.die("the network went away")

    def delay(self) -> float:
        return self.rng.uniform(0, self.faults.max_delay)

    def chance(self, p: float) -> bool:
        return p > 0 and self.rng.random() < p


class Link:
    def __init__(self, net: Network, device: str) -> None:
        self.net = net
        self.device = device
        self.welcome = m.Welcome(1, "sim", "sim", 1, 16 << 20, 64, 4 << 20, net.server.namespaces())
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._closed: str | None = None
        self.on_changed: Callable[[Any], None] | None = None
        self.on_closed: Callable[[], None] | None = None

    @property
    def root_ns(self) -> int:
        return 1

    def die(self, reason: str) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(reason))
        self._pending.clear()
        if self in self.net.links:
            self.net.links.remove(self)
        if self.on_closed:
            self.on_closed()

    async def close(self) -> None:
        self.die("closed")

    def push(self, msg: m.Message) -> None:
        if self.on_changed and self._closed is None:
            self.on_changed(framing.decode(framing.encode(msg)))

    async def _roundtrip(self, req_id: int, serve: Callable[[], tuple[str, bytes | None]]) -> Any:
        if self._closed is not None:
            raise ConnectionLost(self._closed)
        net = self.net
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        copies = 2 if net.chance(net.faults.duplicate) else 1
        for _ in range(copies):
            asyncio.get_running_loop().call_later(net.delay(), self._arrive, req_id, serve)
        if net.chance(net.faults.disconnect):
            asyncio.get_running_loop().call_later(net.delay(), self.die, "connection reset")
        try:
            reply = await fut
        finally:
            self._pending.pop(req_id, None)
        if isinstance(reply, m.Error):
            raise ProtocolError.received(reply.code, reply.message, reply.detail)
        return reply

    def _arrive(self, req_id: int, serve: Callable[[], tuple[str, bytes | None]]) -> None:
        """The request reaches the server (if the link still stands and the frame survives)."""
        net = self.net
        if self._closed is not None:
            return
        net.frames += 1
        if net.chance(net.faults.drop):
            self.die("a frame was lost")  # TCP gives up: the connection dies
            return
        text, data = serve()
        asyncio.get_running_loop().call_later(net.delay(), self._reply, req_id, text, data)

    def _reply(self, req_id: int, text: str, data: bytes | None) -> None:
        net = self.net
        if self._closed is not None:
            return
        if net.chance(net.faults.drop):
            self.die("a frame was lost")
            return
        fut = self._pending.get(req_id)
        if fut is None or fut.done():
            return  # the second reply to a duplicated request
        msg = framing.decode(text)
        if data is not None and not isinstance(msg, m.Error):
            fut.set_result(
                framing.decode_block(framing.encode_block(framing.KIND_DATA, req_id, msg.hash, data))
            )  # type: ignore[attr-defined]
        else:
            fut.set_result(msg)

    async def call(self, make: Callable[[int], m.Message], expect: type | None = None) -> Any:
        req_id = next(self._ids)
        text = framing.encode(make(req_id))

        def serve() -> tuple[str, bytes | None]:
            return self.net.server.handle_text(text, self.device), None

        reply = await self._roundtrip(req_id, serve)
        if expect is not None and not isinstance(reply, expect):
            raise ProtocolError(ErrorCode.PROTOCOL, f"expected {expect.TYPE}, got {reply.TYPE}")  # type: ignore[attr-defined]
        return reply

    async def put_block(self, h: bytes, data: bytes | memoryview) -> None:
        req_id = next(self._ids)
        frame = framing.decode_block(framing.encode_block(framing.KIND_PUT, req_id, h, data))

        def serve() -> tuple[str, bytes | None]:
            try:
                self.net.server.put_block(frame.hash, bytes(frame.data))
                return framing.encode(m.Ok(req_id)), None
            except ProtocolError as e:
                return framing.encode(framing.error_for(req_id, e)), None

        await self._roundtrip(req_id, serve)

    async def get_block(self, h: bytes) -> bytes:
        req_id = next(self._ids)
        text = framing.encode(m.GetBlock(req_id, h))

        def serve() -> tuple[str, bytes | None]:
            msg = framing.decode(text)
            assert isinstance(msg, m.GetBlock)
            try:
                return framing.encode(msg), self.net.server.get_block(msg.hash)
            except ProtocolError as e:
                return framing.encode(framing.error_for(req_id, e)), None

        frame = await self._roundtrip(req_id, serve)
        return bytes(frame.data)
