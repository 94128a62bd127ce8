"""Fans PostgreSQL NOTIFYs out to this process's connected devices.

Commits ``NOTIFY ferry_changes '<ns>:<seq>'`` inside their transaction, so a
notice exists only for committed data; revocations notify ``ferry_devices``;
changes of who may see which shared folder notify ``ferry_members``.
Every server process LISTENs on one dedicated connection. Notices are hints:
a device that misses one catches up from its cursor.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg

from protocol.messages import BlockRef
from server.metastore import DEVICES_CHANNEL, MEMBERS_CHANNEL, NOTIFY_CHANNEL

log = logging.getLogger("ferry.notifier")
ChangeHandler = Callable[[int, int], None]
IncomingHandler = Callable[
    [int, int, list[BlockRef], bytes | None], None
]  # (origin device, ns, blocks, base)


class Notifier:
    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: asyncpg.Connection | None = None
        self._by_ns: defaultdict[int, set[ChangeHandler]] = defaultdict(set)
        self._by_device: defaultdict[int, set[Callable[[], None]]] = defaultdict(set)
        self._by_user: defaultdict[int, set[Callable[[], None]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._incoming: defaultdict[int, set[IncomingHandler]] = defaultdict(set)

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._watch())

    async def _connect(self) -> None:
        self._conn = await asyncpg.connect(self.url)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._on_change)
        await self._conn.add_listener(DEVICES_CHANNEL, self._on_device)
        await self._conn.add_listener(MEMBERS_CHANNEL, self._on_members)

    async def _watch(self) -> None:
        """Reconnect the LISTEN connection if PostgreSQL drops it; tell every
        subscriber to re-check (a notice may have been missed meanwhile)."""
        while True:
            await asyncio.sleep(2)
            if self._conn is not None and not self._conn.is_closed():
                continue
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError) as e:
                log.warning("notifier reconnect failed: %s", e)
                continue
            for ns, handlers in list(self._by_ns.items()):
                for handler in list(handlers):
                    handler(ns, -1)
            for user_handlers in list(self._by_user.values()):
                for on_members in list(user_handlers):
                    on_members()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    def subscribe(self, ns: int, handler: ChangeHandler) -> None:
        self._by_ns[ns].add(handler)

    def unsubscribe(self, ns: int, handler: ChangeHandler) -> None:
        _drop(self._by_ns, ns, handler)

    def listen_incoming(self, ns: int, handler: IncomingHandler) -> None:
        """``handler`` hears of uploads about to start in ``ns`` (streaming sync hints)."""
        self._incoming[ns].add(handler)

    def unlisten_incoming(self, ns: int, handler: IncomingHandler) -> None:
        _drop(self._incoming, ns, handler)

    def incoming(self, origin: int, ns: int, blocks: list[BlockRef], base: bytes | None = None) -> None:
        """Device ``origin`` is about to upload a file of ``blocks`` in ``ns``
        (replacing the version whose content hash is ``base``, if given).
        Told to this process's devices only: a hint for devices on the
        uploader's LAN, which is missed, not wrong, elsewhere."""
        for handler in list(self._incoming.get(ns, ())):
            handler(origin, ns, blocks, base)

    def watch_device(self, device_id: int, on_revoked: Callable[[], None]) -> None:
        self._by_device[device_id].add(on_revoked)

    def unwatch_device(self, device_id: int, on_revoked: Callable[[], None]) -> None:
        _drop(self._by_device, device_id, on_revoked)

    def watch_user(self, user_id: int, on_members: Callable[[], None]) -> None:
        """``on_members`` runs when the shared folders visible to ``user_id`` change."""
        self._by_user[user_id].add(on_members)

    def unwatch_user(self, user_id: int, on_members: Callable[[], None]) -> None:
        _drop(self._by_user, user_id, on_members)

    def _on_members(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for handler in list(self._by_user.get(int(payload), ())) if payload.isdigit() else ():
            handler()

    def _on_change(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            ns, seq = (int(x) for x in payload.split(":"))
        except ValueError:
            return
        for handler in list(self._by_ns.get(ns, ())):
            handler(ns, seq)

    def _on_device(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for handler in list(self._by_device.get(int(payload), ())) if payload.isdigit() else ():
            handler()


def _drop(handlers: defaultdict[int, set[Any]], key: int, handler: Any) -> None:
    """Forget ``handler`` for ``key`` (and the key once nobody listens)."""
    handlers[key].discard(handler)
    if not handlers[key]:
        del handlers[key]
