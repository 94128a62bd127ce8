"""This device on the LAN: what the sync engine uses to fetch blocks from
peers before the server, and to serve its own blocks to them.

Theory of operation. At start the node listens for peer links (TLS) on the
LAN port, or an ephemeral one when that is taken, and asks the server for a
ticket (renewed at half its lifetime). Once it has one, it announces itself
(``discovery``). To fetch a block it asks the peers in sight that share a
namespace with it, one after the other, each within ``fallback_s``; then
the server. A peer that refuses the connection is tried again half a second
later (it may be starting); one that makes us wait out the fallback is set
aside for 10 s, twice as long each time in a row up to a minute; one that
sends bytes not matching the hash, for ten minutes. A block
being fetched from the server is served to a peer that asks for it meanwhile
(once it arrives), and devices walk a file in the same order
(:meth:`Scope.first_block`), so devices fetching the same new file at once
ask each other for each block at about the same moment; of two that do,
the one :func:`_first` gives the block to fetches it and the other waits for
it, so they split the file about evenly, the server sends it about once, and
most blocks a peer takes from us are still in memory. It counts
bytes from peers and from the server for ``ferry status``. Serving is
bounded: at most ``max_links`` links, ``max_blocks`` blocks being read for
peers at once, and optionally ``rate`` bytes per second, so a busy peer
keeps its own sync going.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from client.lan.discovery import Discovery
from client.lan.identity import Identity, load_identity
from client.lan.link import Framed, PeerGone, PeerLink, Serving, listen, open_link, serve_link
from protocol import directio, lan
from protocol import messages as m
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import block_hash

log = logging.getLogger("ferry.lan")
DEFAULT_PORT = 17500
SLOW_PENALTY = 60.0  # s a peer that timed out or dropped us is left alone (at most)
SLOW_BASE = 10.0  # s for the first time out
REFUSED_PENALTY = 0.5  # s after a refused connection (not started yet? restarting?)
BAD_PENALTY = 600.0  # s a peer that sent a corrupted block is left alone
SIGHT_S = 90.0  # a discovered peer not heard of for this long is out of sight
DISCOVERY_GRACE = 0.2  # s to hear the peers in sight answer our first announcement
IN_FLIGHT_WAIT = 1.0  # s a peer asked for a block it is fetching itself waits for it
HELD_FOR = 2.0  # s a fetched block stays in memory at most, if its writer never says it is written
RECENT_BYTES = 32 * 1024 * 1024  # blocks just read from disk for a peer, kept for the next asker
RECENT_S = 2.0  # (for this long at most)

# (size, mtime_ns, inode) of a file as the last scan saw it; None: our own staging file
Seen = tuple[int, int, int] | None
Locate = Callable[[bytes], list[tuple[Path, int, int, int, Seen]]]  # hash -> (file, offset, size, ns, seen)
AskTickets = Callable[[bytes], Awaitable[m.LanTicketsReply]]


@dataclass
class LanOptions:
    enabled: bool = True
    port: int = DEFAULT_PORT
    peers: list[tuple[str, int]] = field(default_factory=list)  # static: --lan-peer
    fallback_s: float = 2.0
    max_links: int = 16
    max_blocks: int = 4
    rate: int = 0  # bytes per second served; 0: unlimited


def parse_peer(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a peer address: {text!r} (try 192.168.1.20:17500)")
    return host, int(port)


@dataclass
class Peer:
    host: str
    port: int
    static: bool
    seen: float = 0.0
    link: PeerLink | None = None
    link_ticket: str = ""  # our ticket the link was opened with
    bad_until: float = 0.0
    failures: int = 0  # in a row: each sets the peer aside twice as long
    why: str = ""
    received: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class LanNode:
    def __init__(self, home: Path, options: LanOptions, server_key: str, ask_tickets: AskTickets,
                 locate: Locate) -> None:  # fmt: skip
        self.options = options
        self.home = home
        self.server_key = server_key  # given at login; empty for a device logged in before LAN sync
        self.ask_tickets, self.locate = ask_tickets, locate
        self.me: Identity | None = None
        self.reply: m.LanTicketsReply | None = None
        self.ready = asyncio.Event()  # a ticket is here and peers in sight have answered (or never will)
        self._ready_by: float | None = None
        self.peers: dict[tuple[str, int], Peer] = {(h, p): Peer(h, p, static=True) for h, p in options.peers}
        self.from_peers = self.from_server = self.served = 0
        self.port: int | None = None
        self.note = ""  # why LAN sync is limited, for ferry status
        self._server: asyncio.Server | None = None
        self._discovery: Discovery | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # links being closed
        self._ticket_task: asyncio.Task[None] | None = None
        self._links = 0
        self._blocks = asyncio.Semaphore(options.max_blocks)
        self._next_send = 0.0
        # blocks of files being fetched now: where in which temp file, and their namespace
        # and of files being uploaded (streaming sync), with the stat the scan saw (else None)
        self.partial: dict[bytes, dict[Path, tuple[int, int, int, Seen]]] = {}
        # blocks being fetched now (from peers, then the server), with the namespace of the file
        self._fetching: dict[bytes, _Fetch] = {}
        # blocks read from disk for peers: being read now, and the last few read (with their
        # namespace), so that devices asking for the same block at once cost one read
        self._reading: dict[bytes, asyncio.Future[None]] = {}
        self._recent: collections.OrderedDict[bytes, tuple[float, int, bytes]] = collections.OrderedDict()
        self._recent_bytes = 0

    def scope(self, ns: int) -> Scope:
        """A block source for a file of namespace ``ns`` (``client.transfer.BlockSource``)."""
        return Scope(self, ns)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self.me = await asyncio.to_thread(load_identity, self.home)
        await self._listen()

    def begin(self) -> None:
        """Ask for tickets (and then announce) from now on; idempotent."""
        if self._ticket_task is None:
            self._ticket_task = asyncio.create_task(self._ticket_loop())

    async def stop(self) -> None:
        for t in [*self._tasks, self._ticket_task]:
            if t is not None:
                t.cancel()
        if self._discovery is not None:
            await self._discovery.stop()
        if self._server is not None:
            self._server.close()
        for peer in self.peers.values():
            if peer.link is not None:
                await peer.link.close()

    async def _listen(self) -> None:
        assert self.me is not None
        ctx = self.me.server_context()
        for port in (self.options.port, 0):
            try:
                self._server = await listen(self._on_link, port, ctx)
            except OSError as e:
                if e.errno != errno.EADDRINUSE or port == 0:
                    raise
                continue
            self.port = self._server.sockets[0].getsockname()[1]
            if port == 0:
                self.note = (
                    f"port {self.options.port} is in use (another device here?); serving on {self.port}"
                )
                log.info("LAN: %s", self.note)
            return

    async def _ticket_loop(self) -> None:
        assert self.me is not None
        while True:
            try:
                reply = await self.ask_tickets(self.me.fingerprint)
            except ProtocolError as e:
                if e.code == ErrorCode.UNKNOWN_TYPE:
                    self.note = "the server issues no LAN tickets (an older server?): LAN sync is off"
                    self.ready.set()
                    return
                log.info("LAN: no ticket yet (%s); retrying", e.message)
                await asyncio.sleep(30)
                continue
            except Exception as e:
                log.debug("LAN: no ticket yet (%s); retrying", e)
                await asyncio.sleep(10)
                continue
            if self.server_key and reply.server_key != self.server_key:
                self.note = (
                    "the server's LAN key differs from the one given at login: run `ferry login` again"
                )
                log.warning("LAN: %s", self.note)
                self.ready.set()
                return
            self.server_key = self.server_key or reply.server_key  # logged in before LAN sync existed
            self.reply = reply
            if self._discovery is None:
                await self._start_discovery()
                await asyncio.sleep(DISCOVERY_GRACE)  # the peers in sight answer our first announcement
            self.ready.set()
            await asyncio.sleep(max(1.0, (reply.expires_s - time.time()) / 2))

    async def _start_discovery(self) -> None:
        def tags(epoch: int) -> list[str]:
            spaces = self.reply.spaces if self.reply else []
            return [lan.discovery_tag(s.tag_key, epoch) for s in spaces]

        self._discovery = Discovery(self.options.port, secrets.token_hex(8), tags, lambda: self.port or 0,
                                    self._found)  # fmt: skip
        try:
            await self._discovery.start()
        except OSError as e:
            log.info("LAN discovery off: %s", e)
        if not self._discovery.listening:
            self.note = self.note or f"cannot listen for announcements on UDP port {self.options.port}"

    def _found(self, host: str, port: int) -> None:
        if (host, port) == ("127.0.0.1", self.port):
            return
        peer = self.peers.setdefault((host, port), Peer(host, port, static=False))
        peer.seen = time.monotonic()

    # --- fetching ----------------------------------------------------------------------

    def _tags(self) -> frozenset[str]:
        return frozenset(s.tag for s in self.reply.spaces) if self.reply else frozenset()

    def has_peers(self) -> bool:
        """A ticket is here and some peer is in sight (it may hold what we need)."""
        return self.reply is not None and bool(self._candidates())

    def _candidates(self) -> list[Peer]:
        now = time.monotonic()
        mine = self._tags()
        return [
            p for p in self.peers.values()
            if p.bad_until <= now and (p.static or now - p.seen < SIGHT_S)
            and (p.link is None or p.link.tags & mine)
        ]  # fmt: skip

    @overload
    async def get_block(
        self, h: bytes, ns: int, from_server: Callable[[], Awaitable[bytes | memoryview]]
    ) -> bytes | memoryview: ...

    @overload
    async def get_block(self, h: bytes, ns: int, from_server: None) -> bytes | memoryview | None: ...

    async def get_block(
        self, h: bytes, ns: int, from_server: Callable[[], Awaitable[bytes | memoryview]] | None
    ) -> bytes | memoryview | None:
        """The block from the first peer that has it, else from the server
        (``from_server`` None: else None); hash-checked either way."""
        while (other := self._fetching.get(h)) is not None:  # another file of ours needs it too: one fetch
            try:
                return await asyncio.shield(other.done)
            except _NoPeerHad:  # that one asked the peers only
                if from_server is None:
                    return None
        fetch = _Fetch(ns, asyncio.get_running_loop().create_future())
        self._fetching[h] = fetch
        try:
            data = await self._from_peers(h)
            if data is None:
                if from_server is None:
                    raise _NoPeerHad()  # (so that a download waiting on this fetch asks on its own)
                fetch.from_server = True
                data = await from_server()
                if await asyncio.to_thread(block_hash, data) != h:
                    raise ProtocolError(ErrorCode.BAD_BLOCK, f"block {h.hex()[:12]} arrived corrupted")
                self.from_server += len(data)
        except BaseException as e:
            del self._fetching[h]
            fetch.done.set_exception(e if isinstance(e, Exception) else PeerGone("cancelled"))
            fetch.done.exception()  # retrieved: nobody may be waiting
            if isinstance(e, _NoPeerHad):
                return None
            raise
        # still named as ours until the caller has written it and says where (Scope.holding): a
        # peer asking meanwhile gets these bytes, where it would hear "not found" and ask the server
        fetch.done.set_result(data)
        # (the timer refers to the fetch weakly: once the writer has said so, nothing holds the bytes)
        asyncio.get_running_loop().call_later(HELD_FOR, self._written, h, weakref.ref(fetch))
        return data

    def _written(self, h: bytes, fetch: weakref.ref[_Fetch] | None = None) -> None:
        """Block ``h``, fetched, is written where :meth:`_read_block` finds it (or
        was not written after all): forget the fetch and the bytes it holds."""
        current = self._fetching.get(h)
        if current is not None and current.done.done() and (fetch is None or current is fetch()):
            del self._fetching[h]

    async def _from_peers(self, h: bytes) -> bytes | memoryview | None:
        if not self.ready.is_set():  # the first ticket (and the first answers to our announcement)
            if self._ready_by is None:  # waited for once, by every block asked for meanwhile
                self._ready_by = time.monotonic() + self.options.fallback_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), max(0.0, self._ready_by - time.monotonic()))
        if self.reply is None:
            return None
        for peer in _asking_order(self._candidates(), h):
            data = await self._from_peer(peer, h)
            if data is not None:
                self.from_peers += len(data)
                peer.received += len(data)
                return data
        return None

    async def _from_peer(self, peer: Peer, h: bytes, again: bool = True) -> bytes | memoryview | None:
        started = time.monotonic()
        linked = False
        try:
            link = await self._link(peer)
            if link is None or not link.tags & self._tags():
                return None
            linked = True
            data = await asyncio.wait_for(link.get_block(h), self.options.fallback_s)
        except ProtocolError as e:
            if e.code in (ErrorCode.NOT_FOUND, ErrorCode.BUSY):
                return None
            self._set_aside(peer, SLOW_PENALTY, e.message)
            return None
        except (PeerGone, TimeoutError) as e:
            if peer.bad_until > time.monotonic():  # set aside meanwhile by another request (that
                return None  # closed this link): keep the reason it gave, not "link closed"
            if again and linked and isinstance(e, PeerGone):
                # the peer closed a link that worked (a ticket ran out, say): once more on a new one
                return await self._from_peer(peer, h, again=False)
            # a peer that made us wait out the fallback is left alone longer each time
            if time.monotonic() - started < self.options.fallback_s * 0.9:
                self._set_aside(peer, REFUSED_PENALTY, str(e))  # costs nothing to try again soon
                return None
            self._set_aside(peer, min(SLOW_PENALTY, SLOW_BASE * 2**peer.failures), str(e) or "timed out")
            peer.failures += 1
            return None
        if await asyncio.to_thread(block_hash, data) != h:
            log.warning(
                "LAN: peer %s sent a corrupted block; not asking it for %d s", peer.address, BAD_PENALTY
            )
            self._set_aside(peer, BAD_PENALTY, "sent a corrupted block")
            return None
        return data

    async def _link(self, peer: Peer) -> PeerLink | None:
        """The open link to ``peer`` (None: set aside meanwhile), made again when
        either side's ticket has run out or ours was renewed."""
        async with peer.lock:  # one connection attempt at a time
            if peer.bad_until > time.monotonic():
                return None
            assert self.me is not None and self.reply is not None
            link = peer.link
            if (
                link is not None
                and link.closed is None
                and link.expires_s > time.time()
                and (peer.link_ticket == self.reply.ticket)
            ):
                return link
            if link is not None:
                self._close(link)
            peer.link = await open_link(peer.host, peer.port, self.me, self.reply.ticket, self.server_key,
                                        self.options.fallback_s)  # fmt: skip
            peer.link_ticket, peer.failures = self.reply.ticket, 0
            return peer.link

    def _close(self, link: PeerLink) -> None:
        task = asyncio.create_task(link.close())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_aside(self, peer: Peer, seconds: float, why: str) -> None:
        until = time.monotonic() + seconds
        if peer.bad_until >= until:  # already for longer (e.g. its link, closed after a bad block)
            return
        peer.bad_until, peer.why = until, why
        if peer.link is not None:
            self._close(peer.link)
            peer.link = None

    # --- serving ------------------------------------------------------------------------

    async def _on_link(self, framed: Framed) -> None:
        if self._links >= self.options.max_links or self.me is None:
            await framed.close()  # busy: the asker goes elsewhere
            return
        self._links += 1
        try:
            serving = Serving(self.me, lambda: self.reply.ticket if self.reply else "", self._tags,
                              lambda: self.server_key, self._read_block, self._count_served)  # fmt: skip
            await serve_link(framed, serving)
        finally:
            self._links -= 1

    def _count_served(self, n: int) -> None:
        self.served += n

    async def _read_block(self, h: bytes, allowed: frozenset[str], asker: bytes) -> bytes | memoryview | None:
        tag_of = {s.ns: s.tag for s in self.reply.spaces} if self.reply else {}
        while (reading := self._reading.get(h)) is not None:  # another peer asked just now: share
            await asyncio.shield(reading)  # that read (always resolved, to None)
        if (recent := self._recent.get(h)) is not None and tag_of.get(recent[1]) in allowed:
            await self._pace(len(recent[2]))
            return recent[2]
        read: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reading[h] = read
        try:
            found = await self._read_disk(h, tag_of, allowed)
        finally:
            del self._reading[h]
            read.set_result(None)
        if found is not None:
            self._keep(h, *found)
            await self._pace(len(found[1]))
            return found[1]
        fetching = self._fetching.get(h)
        if fetching is not None and tag_of.get(fetching.ns) in allowed:
            if fetching.done.done() and fetching.done.exception() is None:  # fetched, being written
                got = fetching.done.result()
                await self._pace(len(got))
                return got  # (as it arrived: its own buffer, never reused)
            if not fetching.from_server and self.me is not None and _first(asker, self.me.fingerprint, h):
                # we are asking the peers for it too, the asker among them: of two devices that
                # want a block at once, the one :func:`_first` picks fetches it, the other waits
                return None
            with contextlib.suppress(Exception):  # fetched too slowly, or failed: "not found"
                got = await asyncio.wait_for(asyncio.shield(fetching.done), IN_FLIGHT_WAIT)
                await self._pace(len(got))
                return got  # hash-checked when it arrived
        return None

    async def _read_disk(
        self, h: bytes, tag_of: dict[int, str], allowed: frozenset[str]
    ) -> tuple[int, bytes] | None:
        partial = [(path, *where) for path, where in self.partial.get(h, {}).items()]
        for path, offset, size, ns, seen in [*self.locate(h), *partial]:
            if tag_of.get(ns) not in allowed:
                continue
            async with self._blocks:  # disk reads for peers, at most max_blocks at once
                data = await asyncio.to_thread(_read_served, path, offset, size, h, seen)
            if data is not None:
                return ns, data
        return None

    def _keep(self, h: bytes, ns: int, data: bytes) -> None:
        """Keep a block just read for a peer, for the next asker: at most
        ``RECENT_BYTES`` and ``RECENT_S`` seconds."""
        if h in self._recent:
            return
        if not self._recent:
            asyncio.get_running_loop().call_later(RECENT_S, self._expire)
        self._recent[h] = (time.monotonic(), ns, data)
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES:
            self._forget_oldest()

    def _expire(self, keep: float = RECENT_S) -> None:
        """Forget blocks kept longer than ``keep`` seconds; look again later while any are kept."""
        now = time.monotonic()
        while self._recent and now - next(iter(self._recent.values()))[0] >= keep:
            self._forget_oldest()
        if self._recent:
            at = next(iter(self._recent.values()))[0]
            asyncio.get_running_loop().call_later(max(0.05, at + RECENT_S - now), self._expire)

    def _forget_oldest(self) -> None:
        _, (_, _, data) = self._recent.popitem(last=False)
        self._recent_bytes -= len(data)

    async def _pace(self, size: int) -> None:
        """Hold sends to ``rate`` bytes per second (over every link)."""
        if not self.options.rate:
            return
        now = time.monotonic()
        start = max(now, self._next_send)
        self._next_send = start + size / self.options.rate
        await asyncio.sleep(start - now)

    # --- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        peers = []
        for p in self.peers.values():
            if not (p.static or now - p.seen < SIGHT_S):
                continue
            state = f"set aside: {p.why}" if p.bad_until > now else ("connected" if p.link else "in sight")
            peers.append({"address": p.address, "state": state, "static": p.static, "received": p.received,
                          "last_trouble": p.why})  # fmt: skip
        return {"port": self.port, "note": self.note, "ticket": self.reply is not None, "peers": peers,
                "from_peers": self.from_peers, "from_server": self.from_server, "served": self.served}  # fmt: skip


class _NoPeerHad(Exception):
    """A peers-only fetch (streaming sync) found no peer with the block."""


@dataclass
class _Fetch:
    """A block this device is getting now."""

    ns: int  # of the file that needs it
    done: asyncio.Future[bytes | memoryview]
    from_server: bool = False  # no peer had it: asked the server


@dataclass
class Scope:
    """LAN peers as the source of the blocks of one namespace's file."""

    node: LanNode
    ns: int

    async def get_block(
        self, h: bytes, from_server: Callable[[], Awaitable[bytes | memoryview]]
    ) -> bytes | memoryview:
        return await self.node.get_block(h, self.ns, from_server)

    def first_block(self, content: bytes, count: int) -> int:
        """The same for every device: devices fetching a file together want
        each block at about the same moment (see :func:`_first`)."""
        return int.from_bytes(content[:8], "big") % count

    def holding(self, h: bytes, tmp: Path, offset: int, size: int) -> None:
        self.node.partial.setdefault(h, {})[tmp] = (offset, size, self.ns, None)
        self.node._written(h)

    def offer(self, path: Path, blocks: list[m.BlockRef], seen: Seen) -> None:
        """Serve the blocks of ``path``, a file about to be uploaded, as a scan
        saw it (``seen``), until :meth:`released` (streaming sync)."""
        offset = 0
        for b in blocks:
            self.node.partial.setdefault(b.hash, {}).setdefault(path, (offset, b.size, self.ns, seen))
            offset += b.size

    async def from_peers(self, h: bytes) -> bytes | memoryview | None:
        return await self.node.get_block(h, self.ns, None)

    def released(self, tmp: Path) -> None:
        for h in [h for h, where in self.node.partial.items() if tmp in where]:
            del self.node.partial[h][tmp]
            if not self.node.partial[h]:
                del self.node.partial[h]


def _asking_order(peers: list[Peer], h: bytes) -> list[Peer]:
    """The peers to ask for block ``h``, in the order every device uses for it
    (by the same rendezvous hash as :func:`_first`; peers not linked yet first,
    to learn who they are):
    of two devices that want a block a third holds, at least one then usually
    asks the other first and takes the block from it as it arrives, so the
    holder is asked for it once rather than by both."""
    return sorted(peers, key=lambda p: _weight(p.link.fingerprint, h)
                  if p.link is not None and p.link.fingerprint else b"")  # fmt: skip


def _first(a: bytes, b: bytes, h: bytes) -> bool:
    """Of devices ``a`` and ``b`` (fingerprints), both wanting block ``h`` at once,
    is ``a`` the one to fetch it from the server? Each block is given to one of
    them by rendezvous hashing, so two devices fetching a file together split
    its blocks about evenly, and each knows which of them takes which."""
    return _weight(a, h) < _weight(b, h)


def _weight(fingerprint: bytes, h: bytes) -> bytes:
    """Device ``fingerprint``'s rendezvous weight for block ``h`` (lower goes first)."""
    return hashlib.sha256(fingerprint + h).digest()


def _read_served(path: Path, offset: int, size: int, h: bytes, seen: Seen) -> bytes | None:
    """The block at ``offset`` of ``path`` if it is still ``h``. Hashed only when
    the file is no longer as the last scan saw it (``seen``: size, mtime and
    inode, the scanner's own test of "unchanged", taken after the read); a
    staging file of ours (``seen`` None) holds only blocks checked as they
    arrived. The asker hashes every block whoever sends it, so this saves the
    serving side a second SHA-256 of everything it serves, not a check."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = directio.pread_cached(fd, size, offset)  # (from the page cache if all there, else past it)
        st = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) != size:
        return None
    if seen is None or (st.st_size, st.st_mtime_ns, st.st_ino) == seen:
        return data
    return data if block_hash(data) == h else None
