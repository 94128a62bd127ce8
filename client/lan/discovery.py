"""Finding peers: a UDP broadcast (and IPv6 all-nodes multicast where there is
one) on the LAN port at start and every 30 s, carrying this device's TLS port
and the discovery tags of its namespaces (``protocol.lan``). A device that
hears an announcement sharing a tag with its own answers it (once per
newcomer, by broadcast too), so a device that just started finds the others
at once. Anything else that
arrives (another program, a malformed or foreign datagram, a stranger's tags)
is dropped after a size check and one JSON parse.

Several devices on one machine share the port (SO_REUSEADDR/SO_REUSEPORT:
each gets every broadcast).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import time
from collections.abc import Callable

from protocol import lan

log = logging.getLogger("ferry.lan")
ANNOUNCE_EVERY = 30.0
SIOCGIFBRDADDR = 0x8919


def broadcast_addresses() -> list[str]:
    """255.255.255.255 and each interface's directed broadcast address (Linux;
    elsewhere only the first): a host without a default route would not send
    the limited broadcast anywhere."""
    out = ["255.255.255.255"]
    with contextlib.suppress(OSError, AttributeError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            req = array.array("B", struct.pack("256s", name.encode()[:15]))
            with contextlib.suppress(OSError):
                fcntl.ioctl(s.fileno(), SIOCGIFBRDADDR, req, True)
                addr = socket.inet_ntoa(req.tobytes()[20:24])
                if addr not in ("0.0.0.0", *out):
                    out.append(addr)
    return out


class Discovery(asyncio.DatagramProtocol):
    def __init__(self, port: int, instance: str, my_tags: Callable[[int], list[str]],
                 tcp_port: Callable[[], int], found: Callable[[str, int], None]) -> None:  # fmt: skip
        self.port, self.instance = port, instance
        self.my_tags = my_tags  # discovery tags of my namespaces for an epoch
        self.tcp_port, self.found = tcp_port, found
        self.transports: list[asyncio.DatagramTransport] = []
        self.listening = False
        self._answered: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for family, bind in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with contextlib.suppress(AttributeError, OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((bind, self.port))
                sock.setblocking(False)
            except OSError as e:
                sock.close()
                log.info("LAN discovery cannot listen on UDP %s port %d: %s", bind, self.port, e)
                continue
            transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
            self.transports.append(transport)
            self.listening = self.listening or family == socket.AF_INET
        self._task = asyncio.create_task(self._announce_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for t in self.transports:
            t.close()

    def _payload(self) -> bytes:
        return lan.encode_announcement(
            self.instance, self.tcp_port(), self.my_tags(lan.epoch_of(time.time()))
        )

    async def _announce_loop(self) -> None:
        while True:
            self.announce()
            await asyncio.sleep(ANNOUNCE_EVERY)

    def announce(self) -> None:
        if not self.transports or not self.my_tags(lan.epoch_of(time.time())):
            return
        payload = self._payload()
        for t in self.transports:
            family = t.get_extra_info("socket").family
            targets = (
                [(a, self.port) for a in broadcast_addresses()]
                if family == socket.AF_INET
                else [(f"ff02::1%{name}", self.port) for _, name in _interfaces()]
            )
            for target in targets:
                with contextlib.suppress(OSError):
                    t.sendto(payload, target)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        found = lan.decode_announcement(data)
        if found is None or found.instance == self.instance:
            return
        now = time.time()
        epoch = lan.epoch_of(now)
        mine = {*self.my_tags(epoch), *self.my_tags(epoch - 1)}  # their clock may lag behind ours
        if not found.tags & mine:
            return  # a stranger, or a device of namespaces we cannot read
        host = str(addr[0])
        if len(addr) == 4 and addr[3]:  # an IPv6 link-local sender: reachable only through its interface
            host = f"{host}%{addr[3]}"
        self.found(host, found.port)
        if self._answered.get(found.instance, 0) < now - ANNOUNCE_EVERY:
            # answer a newcomer once (not an echo chamber), by broadcast: a direct answer
            # would reach only one of the devices sharing the port on its machine
            self._answered[found.instance] = now
            self.announce()

    def error_received(self, exc: Exception) -> None:
        log.debug("LAN discovery: %s", exc)


def _interfaces() -> list[tuple[int, str]]:
    try:
        return [(i, n) for i, n in socket.if_nameindex() if n != "lo"]
    except OSError:
        return []
