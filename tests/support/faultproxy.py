"""A TCP proxy that can misbehave, for fault-injection tests.

``FaultProxy(target_port).start()`` listens on a free 127.0.0.1 port (its
``port``) and forwards every connection to ``127.0.0.1:target_port`` from an
asyncio loop in a thread of its own. Meanwhile a test can:

- count the bytes each way (``up``: client to target, ``down``: back);
- ``cut = (pattern, "before" | "after")``: the next time ``pattern`` goes up a
  connection, reset it just before or just after forwarding it (e.g.
  ``b"COMMIT;"`` to a PostgreSQL server: the transaction is lost, or
  committed with its reply lost); ``cuts`` counts them;
- for HTTP targets (an S3 endpoint), ``http_faults``: a list of actions taken
  on successive requests whose method is in ``http_methods`` — ``"500"`` or
  ``"503"`` (answered by the proxy, never forwarded), ``"reset"`` (half the
  body forwarded, then both sides reset), ``"slow:S"`` (the answer held back
  S seconds), ``"pass"``. ``http_seen`` counts the requests looked at and
  ``http_injected`` the faults injected.

HTTP parsing relies on one request at a time per connection (no pipelining:
true of aiohttp, which aiobotocore uses) and on ``Content-Length`` bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN (SO_LINGER 0): what a crashed middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_port: int, *, http_methods: tuple[str, ...] = ("PUT",)) -> None:
        self.target_port = target_port
        self.port = 0
        self.up = self.down = 0
        self.cut: tuple[bytes, str] | None = None
        self.cuts = 0
        self.http_methods = http_methods
        self.http_faults: list[str] = []
        self.http_seen = self.http_injected = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._http = False
        self._hold = 0.0  # seconds each answer is held back (set by a "slow:S" fault)
        self._up_limit: int | None = None  # bytes up (in all) past which forwarding waits (hold_up)
        self._go_on = asyncio.Event()

    # --- control (from the test's thread) --------------------------------------------

    def start(self, *, http: bool = False) -> FaultProxy:
        self._http = http
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def hold_up(self, more: int) -> None:
        """Forward at most ``more`` bytes more towards the target (whole reads
        only), then hold what comes until :meth:`release_up`."""
        self._loop.call_soon_threadsafe(self._go_on.clear)
        self._up_limit = self.up + more

    def release_up(self) -> None:
        self._up_limit = None
        self._loop.call_soon_threadsafe(self._go_on.set)

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- the loop's side -----------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()

    async def _reset_all(self) -> None:
        for a, b in list(self._pairs):
            _reset(a)
            _reset(b)
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            forward = self._http_requests if self._http else self._pump_up
            await asyncio.gather(forward(reader, up_writer, writer), self._pump_down(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _pump_up(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, client: Any) -> None:
        while data := await reader.read(65536):
            if self._up_limit is not None and self.up + len(data) > self._up_limit:
                await self._go_on.wait()
            cut, self.up = self.cut, self.up + len(data)
            if cut is not None and cut[0] in data:
                self.cut, self.cuts = None, self.cuts + 1
                if cut[1] == "after":
                    up.write(data)
                    await up.drain()
                    await asyncio.sleep(0.05)  # the target has it; its answer goes nowhere
                _reset(client)
                _reset(up)
                return
            up.write(data)
            await up.drain()
        up.write_eof()

    async def _pump_down(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await up_reader.read(65536):
            if self._hold:
                await asyncio.sleep(self._hold)
            self.down += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def _http_requests(
        self, reader: asyncio.StreamReader, up: asyncio.StreamWriter, client: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                up.write_eof()
                return
            method = head.split(b" ", 1)[0].decode("latin-1")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            action = "pass"
            if method in self.http_methods:
                self.http_seen += 1
                if self.http_faults:
                    action = self.http_faults.pop(0)
            if action in ("500", "503"):  # answered at once, body unread (fine with Expect: 100-continue too)
                self.http_injected += 1
                reason = "Internal Server Error" if action == "500" else "Service Unavailable"
                code = "InternalError" if action == "500" else "ServiceUnavailable"
                xml = f"<Error><Code>{code}</Code><Message>injected by FaultProxy</Message></Error>"
                client.write(
                    f"HTTP/1.1 {action} {reason}\r\nContent-Type: application/xml\r\n"
                    f"Content-Length: {len(xml)}\r\nConnection: close\r\n\r\n{xml}".encode()
                )
                await client.drain()
                client.close()
                up.transport.abort()
                return
            self._hold = float(action.split(":", 1)[1]) if action.startswith("slow:") else 0.0
            self.http_injected += action != "pass"
            # the head first: a client sending "Expect: 100-continue" waits for the answer to it
            up.write(head)
            self.up += len(head)
            await up.drain()
            body = await reader.readexactly(length // 2 if action == "reset" else length)
            self.up += len(body)
            up.write(body)
            await up.drain()
            if action == "reset":
                _reset(client)
                _reset(up)
                return
