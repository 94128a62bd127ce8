"""The WebSocket endpoint: one session per connected device.

A session authenticates the upgrade (bearer token; 401 before accepting),
negotiates the version (``hello``/``welcome``), then reads frames and runs
each request as its own task, at most ``max_in_flight`` at once and at most
``IN_FLIGHT_BYTES`` of request frames: when either is reached the reader stops
reading, so a flooding client is slowed by TCP back-pressure instead of growing
queues (and a burst of a thousand small blocks still runs as one group).
Replies wait in memory until the client reads them, so at most ``BLOCK_READS``
block reads and ``REPLIES`` other replies are built and unsent at once; a
client that reads nothing for ``send_timeout`` is cut off. A bad request gets an error
frame for its id; the session and every other request carry on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from protocol import framing
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import validate_path
from protocol.version import negotiate
from server import bounds, mounts, sharing, versions
from server.metastore import Principal
from server.metrics import COUNTERS
from server.services import Services, translate_errors

log = logging.getLogger("ferry.ws")
SERVER_NAME = "ferry/0.1"
MAX_QUERY_HASHES = 20_000


async def endpoint(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    settings = services.settings
    origin = bounds.foreign_origin(websocket.headers, settings.allowed_origins)
    if origin is not None:
        why = f"WebSocket from origin {origin} refused: only this server's own pages (and --allowed-origins) may connect"
        await _deny(websocket, 403, why)
        return
    ip = websocket.client.host if websocket.client else ""
    with websocket.app.state.sessions_per_ip.hold(ip) as admitted:
        if not admitted:
            limit = settings.max_connections_per_ip
            await _deny(websocket, 429, f"too many connections from {ip} (at most {limit}); retry later")
            return
        try:
            who = await services.authenticate(websocket.headers.get("authorization", ""))
        except ProtocolError as e:
            await _deny(websocket, 401 if e.code == ErrorCode.UNAUTHORIZED else 503, e.message)
            return
        with websocket.app.state.sessions_per_user.hold(who.user_id) as admitted:
            if not admitted:
                limit = settings.max_connections_per_user
                why = f"too many connections for user {who.user} (at most {limit}); close some and retry"
                await _deny(websocket, 429, why)
                return
            await websocket.accept()
            await Session(websocket, services, who).run()


async def _deny(websocket: WebSocket, status: int, why: str) -> None:
    """Refuse the upgrade with an HTTP status and a one-line reason."""
    await websocket.send_denial_response(PlainTextResponse(why, status_code=status))


IN_FLIGHT_BYTES = 32 * 1024 * 1024  # request frames being handled, per session
BLOCK_READS = 16  # blocks read for replies and not yet sent, per session
INCOMING_QUEUE = 8  # streaming-sync hints waiting to be sent, per session
REPLIES = 16  # other replies being built or waiting to be sent, per session


class _Bytes:
    """A byte budget: ``acquire(n)`` waits (first come, first served) until n
    more bytes fit; a request larger than the whole budget waits for it all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return n
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as we were cancelled
            else:
                self._waiters.remove((n, future))
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            size, future = self._waiters.popleft()
            self.used += size
            future.set_result(None)


class Session:
    def __init__(self, ws: WebSocket, services: Services, who: Principal) -> None:
        self.ws, self.services, self.who = ws, services, who
        self.settings = services.settings
        self._send_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.settings.max_in_flight)
        self._bytes = _Bytes(IN_FLIGHT_BYTES)
        self._reads = asyncio.Semaphore(BLOCK_READS)
        self._replies = asyncio.Semaphore(REPLIES)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pushes: dict[int, int] = {}
        self._push_ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._namespaces: list[int] = []
        self._takes_incoming = False  # the client's hello named the "incoming" feature
        self._incoming_sends = 0  # Incoming pushes not yet sent (hints: dropped beyond INCOMING_QUEUE)

    # --- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        pusher = asyncio.create_task(self._push_loop())
        self.services.notifier.watch_device(self.who.device_id, self._revoked)
        self.services.notifier.watch_user(self.who.user_id, self._members_changed)
        try:
            if await self._handshake():
                await self._read_loop()
        except WebSocketDisconnect:
            pass
        finally:
            self._closed.set()
            self.services.notifier.unwatch_device(self.who.device_id, self._revoked)
            self.services.notifier.unwatch_user(self.who.user_id, self._members_changed)
            for ns in self._namespaces:
                self._unwatch(ns)
            pusher.cancel()
            for t in list(self._tasks):
                t.cancel()

    async def _receive(self, timeout: float, waiting_for: str) -> str | bytes:
        try:
            # asyncio.timeout, not wait_for: no task per frame (with 10,000
            # idle sessions those tasks were most of the server's CPU)
            async with asyncio.timeout(timeout):
                msg = await self.ws.receive()
        except TimeoutError:
            await self._close(1001, f"no {waiting_for} within {timeout:g}s")
            raise WebSocketDisconnect(1001) from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        text: str | None = msg.get("text")
        return text if text is not None else bytes(msg["bytes"])

    async def _handshake(self) -> bool:
        frame = await self._receive(self.settings.handshake_timeout, "hello")
        try:
            if not isinstance(frame, str):
                raise ProtocolError(ErrorCode.PROTOCOL, "the first frame must be a hello message")
            hello = framing.decode(frame)
            if not isinstance(hello, m.Hello):
                raise ProtocolError(ErrorCode.PROTOCOL, f"expected hello first, got {hello.TYPE}")
            version = negotiate(hello.versions)
            with translate_errors():
                spaces = await self.services.meta.namespaces(self.who)
        except ProtocolError as e:
            await self._send(framing.error_for(None, e))
            await self._close(1002 if e.code != ErrorCode.UNAVAILABLE else 1011, e.message[:120])
            return False
        self._namespaces = [n.ns for n in spaces]
        self._takes_incoming = "incoming" in hello.features
        for ns in self._namespaces:
            self._watch(ns)
        await self._send(
            m.Welcome(
                version=version,
                server=SERVER_NAME,
                user=self.who.user,
                device_id=self.who.device_id,
                max_frame=self.settings.max_frame,
                max_in_flight=self.settings.max_in_flight,
                max_block=self.settings.max_block,
                namespaces=spaces,
            )
        )
        return True

    async def _read_loop(self) -> None:
        while True:
            frame = await self._receive(self.settings.idle_timeout, "frame (not even a ping)")
            await self._slots.acquire()  # back-pressure: stop reading while full
            held = await self._bytes.acquire(len(frame))
            task = asyncio.create_task(self._handle(frame))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, held=held))

    def _done(self, task: asyncio.Task[None], held: int) -> None:
        self._tasks.discard(task)
        self._bytes.release(held)
        self._slots.release()

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    def _revoked(self) -> None:
        asyncio.get_running_loop().create_task(self._close(4001, "device token revoked"))

    def _members_changed(self) -> None:
        task = asyncio.get_running_loop().create_task(self._refresh_namespaces())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_namespaces(self) -> None:
        """The user's shared folders changed: push for the namespaces visible now
        (and no longer for one they lost), and tell the device the new list."""
        with contextlib.suppress(Exception):
            spaces = await self.services.meta.namespaces(self.who)
            now = [n.ns for n in spaces]
            for ns in set(self._namespaces) - set(now):
                self._unwatch(ns)
                self._pushes.pop(ns, None)
            for ns in set(now) - set(self._namespaces):
                self._watch(ns)
            self._namespaces = now
            await self._send(m.NamespacesChanged(spaces))

    # --- pushes ------------------------------------------------------------------

    def _on_change(self, ns: int, seq: int) -> None:
        self._pushes[ns] = max(seq, self._pushes.get(ns, 0))
        self._push_ready.set()

    def _watch(self, ns: int) -> None:
        """Push this device the changes of ``ns`` (and uploads about to start there, if it asked)."""
        self.services.notifier.subscribe(ns, self._on_change)
        if self._takes_incoming:
            self.services.notifier.listen_incoming(ns, self._on_incoming)

    def _unwatch(self, ns: int) -> None:
        self.services.notifier.unsubscribe(ns, self._on_change)
        if self._takes_incoming:
            self.services.notifier.unlisten_incoming(ns, self._on_incoming)

    def _on_incoming(self, origin: int, ns: int, blocks: list[m.BlockRef], base: bytes | None) -> None:
        if origin == self.who.device_id:
            return
        if self._incoming_sends >= INCOMING_QUEUE:  # a client slow to read: skip hints, not replies
            return
        self._incoming_sends += 1

        async def send() -> None:
            try:
                with contextlib.suppress(Exception):
                    await self._send(m.Incoming(ns, blocks, base))
            finally:
                self._incoming_sends -= 1

        task = asyncio.get_running_loop().create_task(send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_loop(self) -> None:
        while True:
            await self._push_ready.wait()
            self._push_ready.clear()
            pushes, self._pushes = self._pushes, {}
            for ns, seq in pushes.items():
                if ns not in self._namespaces:  # lost access since the notice came
                    continue
                if seq < 0:  # the notifier reconnected: tell the device where the head is now
                    seq = next(
                        (n.head_seq for n in await self.services.meta.namespaces(self.who) if n.ns == ns), 0
                    )
                with contextlib.suppress(Exception):
                    await self._send(m.Changed(ns, seq))

    # --- sending -----------------------------------------------------------------

    async def _send(self, payload: m.Message | bytes) -> None:
        data: Any = framing.encode(payload) if isinstance(payload, m.Message) else payload
        async with self._send_lock:
            try:
                async with asyncio.timeout(self.settings.send_timeout):
                    if isinstance(data, str):
                        await self.ws.send_text(data)
                    else:
                        await self.ws.send_bytes(data)
            except TimeoutError:  # the client stopped reading: cut it off, spare the others
                await self._close(1008, "client is not reading")
                raise

    # --- requests ----------------------------------------------------------------

    async def _handle(self, frame: str | bytes) -> None:
        req_id: int | None = None
        try:
            if isinstance(frame, bytes):
                block = framing.decode_block(frame)
                req_id = block.id
                if block.kind != framing.KIND_PUT:
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "clients may only send PUT block frames")
                await self.services.put_block(self.who, block.hash, block.data)
                await self._send(m.Ok(block.id))
            else:
                msg = framing.decode(frame)
                req_id = getattr(msg, "id", None)
                if isinstance(msg, m.GetBlock):
                    # checked before taking a read slot, so a burst of asks shares one query
                    await self.services.check_readable(self.who, msg.hash)
                    async with self._reads:  # a block read is held until it is sent
                        data = await self.services.read_block(msg.hash)
                        await self._send(framing.encode_block(framing.KIND_DATA, msg.id, msg.hash, data))
                    return
                # a reply is held from the moment it is built until it is sent:
                # bound how many exist at once, or a client that never reads
                # would have the server build every in-flight reply in memory
                async with self._replies:
                    await self._send(await self._dispatch(msg))
        except ProtocolError as e:
            if req_id is None and e.detail:
                req_id = e.detail.get("id")
            await self._reply_error(req_id, e)
        except (asyncio.CancelledError, WebSocketDisconnect, TimeoutError, RuntimeError):
            pass
        except Exception:
            log.exception("request %s failed", req_id)
            await self._reply_error(
                req_id, ProtocolError(ErrorCode.INTERNAL, "internal error; see the server log")
            )

    async def _reply_error(self, req_id: int | None, e: ProtocolError) -> None:
        with contextlib.suppress(Exception):
            await self._send(framing.error_for(req_id, e))

    async def _dispatch(self, msg: m.Message) -> m.Message | bytes:
        """Run a request; one without a namespace is about the user's whole tree
        (shared folders mounted in it: see :mod:`server.mounts`)."""
        if not mounts.needs_routing(msg):
            return await self._run(msg)
        with translate_errors():
            routed, mount, mine = await mounts.route(self.services.meta, self.who, msg)
            if not mount:
                assert isinstance(msg, m.Move)
                return await mounts.move(self.services.meta, self.who, msg, mine)
        return mounts.outward(await self._run(routed), mount, routed, mine)

    async def _run(self, msg: m.Message) -> m.Message | bytes:
        meta, who = self.services.meta, self.who
        with translate_errors():
            match msg:
                case m.Ping(id=i):
                    return m.Pong(i)
                case m.ListNamespaces(id=i):
                    return m.NamespaceList(i, await meta.namespaces(who))
                case m.Stat(id=i, path=p, ns=ns):
                    return m.EntryReply(i, await meta.stat(who, validate_path(p), ns))
                case m.ListFolder(id=i, path=p, ns=ns, after=after, limit=limit):
                    entries, nxt = await meta.list_folder(who, validate_path(p), ns, after, limit)
                    return m.Listing(i, entries, nxt)
                case m.ListChanges(id=i, since=since, ns=ns, limit=limit):
                    ns_id, entries, cursor, more = await meta.list_changes(who, ns, since, limit)
                    return m.Changes(i, ns_id, entries, cursor, more)
                case m.QueryBlocks(id=i, hashes=hashes):
                    if len(hashes) > MAX_QUERY_HASHES:
                        raise ProtocolError(
                            ErrorCode.TOO_LARGE, f"ask about at most {MAX_QUERY_HASHES} blocks at once"
                        )
                    return m.BlocksMissing(i, await meta.missing_blocks(who, hashes))
                case m.Commit() as c:
                    seq, entry = await meta.commit_file(
                        who,
                        c.key,
                        c.ns,
                        validate_path(c.path),
                        c.parent,
                        c.size,
                        c.mtime_ns,
                        c.executable,
                        c.blocks,
                    )
                    return m.Committed(c.id, seq, entry)
                case m.CommitBatch(id=i, key=key, files=files, ns=ns):
                    checked = [dataclasses.replace(f, path=validate_path(f.path)) for f in files]
                    seq, results = await meta.commit_batch(who, key, ns, checked)
                    return m.CommittedBatch(i, seq, results)
                case m.Mkdir(id=i, key=key, path=p, ns=ns):
                    seq, entry = await meta.mkdir(who, key, ns, validate_path(p))
                    return m.Committed(i, seq, entry)
                case m.Move(id=i, key=key, src=src, dst=dst, parent=parent, ns=ns):
                    seq, entry = await meta.move(who, key, ns, validate_path(src), validate_path(dst), parent)
                    return m.Committed(i, seq, entry)
                case m.Delete(id=i, key=key, path=p, parent=parent, ns=ns, newest=newest):
                    seq, entry = await meta.delete(who, key, ns, validate_path(p), parent, newest)
                    return m.Committed(i, seq, entry)
                case m.History() | m.GetVersion() | m.ListDeleted() | m.Snapshot() | m.Restore() | m.Rewind():
                    return await versions.handle(meta, who, msg)
                case (m.Share() | m.Unshare() | m.ListInvitations() | m.Accept() | m.Leave() | m.ListMembers()
                      | m.CreateLink() | m.ListLinks() | m.RevokeLink() | m.GetQuota()):  # fmt: skip
                    return await sharing.handle(meta, who, msg)
                case m.Upcoming(id=i, ns=ns, blocks=blocks, base=base):
                    if len(blocks) > MAX_QUERY_HASHES:
                        raise ProtocolError(
                            ErrorCode.TOO_LARGE, f"at most {MAX_QUERY_HASHES} blocks per file"
                        )
                    if any(not 0 < b.size <= self.settings.max_block for b in blocks):
                        raise ProtocolError(ErrorCode.BAD_REQUEST, "a block's size is out of range")
                    space = next((n for n in await meta.namespaces(who) if n.ns == ns), None)
                    if space is None:
                        raise ProtocolError(ErrorCode.NOT_FOUND, f"no namespace {ns} here")
                    if space.role == "viewer":
                        raise ProtocolError(
                            ErrorCode.READ_ONLY, f"{space.path} is shared with you as a viewer"
                        )
                    self.services.notifier.incoming(who.device_id, ns, blocks, base)
                    return m.Ok(i)
                case m.LanTickets(id=i, fingerprint=fp):
                    if self.services.lan is None:
                        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, "this server does not issue LAN tickets")
                    spaces = await meta.namespaces(who)
                    COUNTERS.lan_tickets_issued_total += 1
                    return self.services.lan.issue(i, fp, [n.ns for n in spaces])
                case m.Hello():
                    raise ProtocolError(ErrorCode.PROTOCOL, "hello was already exchanged")
                case _:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_TYPE, f"{msg.TYPE} is not a request a client may send"
                    )
