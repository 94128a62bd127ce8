"""The LAN node's own bookkeeping, without sockets: peer addresses, the serving
rate budget, where each device starts a file, blocks of half-fetched files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from client.lan.node import LanNode, LanOptions, parse_peer
from protocol.hashing import block_hash


def node(tmp_path: Path, **options: object) -> LanNode:
    async def no_tickets(fp: bytes) -> object:
        raise AssertionError("not asked")

    return LanNode(tmp_path, LanOptions(**options), "", no_tickets, lambda h: [])  # type: ignore[arg-type]


def test_peer_addresses() -> None:
    assert parse_peer("192.168.1.20:17500") == ("192.168.1.20", 17500)
    assert parse_peer("[fe80::1]:17500") == ("fe80::1", 17500)
    assert parse_peer("nas.local:1") == ("nas.local", 1)
    for bad in ("nas.local", ":17500", "host:0", "host:65536", "host:http"):
        with pytest.raises(ValueError, match="not a peer address"):
            parse_peer(bad)


def test_serving_rate_spreads_sends_over_time(tmp_path: Path) -> None:
    lan = node(tmp_path, rate=10_000_000)

    async def two_blocks() -> float:
        start = time.monotonic()
        await lan._pace(1_000_000)
        await lan._pace(1_000_000)
        return lan._next_send - start

    assert asyncio.run(two_blocks()) == pytest.approx(0.2, abs=0.05)  # the budget, not a speed


def test_devices_walk_a_file_in_the_same_order(tmp_path: Path) -> None:
    from client.lan.identity import load_identity

    starts = set()
    for name in "abcd":
        lan = node(tmp_path / name)
        lan.me = load_identity(tmp_path / name)
        starts.add(lan.scope(1).first_block(b"\x07" * 32, 10**9))
    assert len(starts) == 1  # whoever they are: they want each block at about the same moment
    assert lan.scope(1).first_block(b"\x08" * 32, 10**9) not in starts  # (from the file's content)


def test_two_devices_wanting_the_same_blocks_split_them_evenly_and_agree_who_takes_which() -> None:
    import os

    from client.lan.node import _first

    a, b = os.urandom(32), os.urandom(32)
    hashes = [os.urandom(32) for _ in range(2000)]
    mine = [h for h in hashes if _first(a, b, h)]
    assert all(not _first(b, a, h) for h in mine)  # never both
    assert all(_first(b, a, h) for h in hashes if h not in mine)  # never neither
    # about half each (binomial: outside 40-60 % once in ~10^19 runs)
    assert 800 < len(mine) < 1200


def test_blocks_of_a_half_fetched_file_are_forgotten_when_it_is_released(tmp_path: Path) -> None:
    lan = node(tmp_path)
    scope = lan.scope(3)
    scope.holding(b"h1", tmp_path / "t1", 0, 10)
    scope.holding(b"h2", tmp_path / "t1", 10, 10)
    scope.holding(b"h1", tmp_path / "t2", 0, 10)
    scope.released(tmp_path / "t1")
    assert lan.partial == {b"h1": {tmp_path / "t2": (0, 10, 3, None)}}


def test_a_served_block_is_hashed_only_when_its_file_changed_since_the_scan(tmp_path: Path) -> None:
    import os

    from client.lan.node import _read_served
    from protocol.hashing import block_hash

    path = tmp_path / "f"
    path.write_bytes(b"a" * 100 + b"b" * 100)
    st = os.stat(path)
    seen = (st.st_size, st.st_mtime_ns, st.st_ino)
    h = block_hash(b"b" * 100)
    assert _read_served(path, 100, 100, h, seen) == b"b" * 100
    # as the scan saw it: trusted without a hash (a wrong name shows none was taken;
    # the asker's own check is what refuses a wrong block)
    assert _read_served(path, 100, 100, b"\0" * 32, seen) == b"b" * 100
    with open(path, "r+b") as f:  # changed since the scan: now each block is hashed
        f.seek(100)
        f.write(b"c" * 100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (the clock may not have ticked)
    assert _read_served(path, 100, 100, h, seen) is None
    assert _read_served(path, 0, 100, block_hash(b"a" * 100), seen) == b"a" * 100  # this one is still right
    assert _read_served(path, 150, 100, h, seen) is None  # past the end
    assert _read_served(tmp_path / "gone", 0, 100, h, seen) is None
    # a staging file of ours: its blocks were checked as they arrived
    assert _read_served(path, 100, 100, b"\0" * 32, None) == b"c" * 100


def test_of_two_devices_wanting_a_block_at_once_the_one_it_is_given_to_fetches_it(tmp_path: Path) -> None:
    """While this device is still asking its peers for a block, a peer the
    block is given to (``_first``) asking for it is told "not found" at once
    (it fetches it from the server); any other waits for our copy."""
    import os
    from types import SimpleNamespace

    from client.lan.node import _Fetch, _first

    me = b"\x80" * 32
    h = os.urandom(32)
    theirs = next(fp for fp in (os.urandom(32) for _ in range(200)) if _first(fp, me, h))
    ours = next(fp for fp in (os.urandom(32) for _ in range(200)) if _first(me, fp, h))

    async def go() -> None:
        lan = node(tmp_path)
        lan.me = SimpleNamespace(fingerprint=me)  # type: ignore[assignment]
        lan.reply = SimpleNamespace(spaces=[SimpleNamespace(ns=3, tag="t3")])  # type: ignore[assignment]
        fetch = _Fetch(3, asyncio.get_running_loop().create_future())
        lan._fetching[h] = fetch
        assert await lan._read_block(h, frozenset({"t3"}), theirs) is None  # theirs to fetch: at once
        waiting = asyncio.create_task(lan._read_block(h, frozenset({"t3"}), ours))
        await asyncio.sleep(0)
        assert not waiting.done()  # ours to fetch: it waits for our copy
        fetch.done.set_result(b"data")
        assert await waiting == b"data"
        fetch.from_server = True  # once we fetch it from the server, everyone waits for it
        assert await lan._read_block(h, frozenset({"t3"}), theirs) == b"data"
        assert await lan._read_block(h, frozenset({"t9"}), ours) is None  # not theirs to read

    asyncio.run(go())


def test_a_peers_only_fetch_that_finds_nothing_leaves_the_block_to_the_next_asker(tmp_path: Path) -> None:
    """Streaming sync asks peers only; a download that wants the same block
    meanwhile waits for that ask, then fetches the block itself, not fails."""
    from protocol.hashing import block_hash

    lan = node(tmp_path)
    lan.ready.set()
    data = b"a block"
    h = block_hash(data)

    async def go() -> None:
        peers_answer = asyncio.Event()

        async def no_peer_has_it(_h: bytes) -> None:
            await peers_answer.wait()

        async def server() -> bytes:
            return data

        lan._from_peers = no_peer_has_it  # type: ignore[assignment,method-assign]
        prefetch = asyncio.create_task(lan.get_block(h, 1, None))
        await asyncio.sleep(0)  # it is asking the peers now
        assert h in lan._fetching
        download = asyncio.create_task(lan.get_block(h, 1, server))
        await asyncio.sleep(0)  # and the download waits for that
        peers_answer.set()
        assert await prefetch is None
        assert await download == data
        assert lan.from_server == len(data) and lan.from_peers == 0
        # fetched, not yet written: still ours to give a peer (not "not found", which would send
        # it to the server too) until the writer says where it is
        assert lan._fetching[h].done.result() == data
        lan.scope(1).holding(h, tmp_path / "t", 0, len(data))
        assert not lan._fetching and lan.partial[h] == {tmp_path / "t": (0, len(data), 1, None)}

    asyncio.run(go())


def test_a_fetched_block_is_let_go_as_soon_as_its_writer_says_it_is_written(tmp_path: Path) -> None:
    """Until the writer says where it put a fetched block, the node keeps the
    bytes for peers that ask; after that nothing may hold them (not the 2 s
    timer that forgets a block nobody said was written), or a device receiving
    at LAN speed holds hundreds of MiB of written blocks."""
    import gc
    import weakref

    class Blob(bytearray):  # (a bytearray that can be referred to weakly)
        pass

    lan = node(tmp_path)
    lan.ready.set()

    async def go() -> None:
        peer_sends = [Blob(b"x" * 1000)]
        h = block_hash(peer_sends[0])
        gone = weakref.ref(peer_sends[0])

        async def from_a_peer(_h: bytes) -> Blob:
            return peer_sends.pop()

        lan._from_peers = from_a_peer  # type: ignore[assignment,method-assign]
        data = await lan.get_block(h, 1, None)
        assert data is gone() and lan._fetching[h].done.result() is data
        lan.scope(1).holding(h, tmp_path / "t", 0, len(data))
        del data
        gc.collect()
        assert gone() is None, "a written block is still held in memory"

    asyncio.run(go())


def test_blocks_of_a_file_being_uploaded_are_offered_with_the_stat_the_scan_saw(tmp_path: Path) -> None:
    from protocol import messages as m

    lan = node(tmp_path)
    scope = lan.scope(4)
    src = tmp_path / "big.bin"
    scope.offer(src, [m.BlockRef(b"h1", 10), m.BlockRef(b"h2", 5), m.BlockRef(b"h1", 10)], (25, 7, 9))
    assert lan.partial == {b"h1": {src: (0, 10, 4, (25, 7, 9))}, b"h2": {src: (10, 5, 4, (25, 7, 9))}}
    scope.released(src)
    assert lan.partial == {}


def test_a_prefetch_stops_asking_when_the_commit_comes_and_hands_over_what_it_has(tmp_path: Path) -> None:
    """Streaming sync: blocks come from peers one by one; once told to stop
    (the commit is here and the download takes over), no block more is asked
    for, and the temp file holds exactly the blocks it reports done."""
    from client import transfer
    from protocol import messages as m
    from protocol.hashing import block_hash

    lan = node(tmp_path)
    lan.ready.set()
    blocks = [bytes([65 + k]) * (100 + k) for k in range(6)]
    refs = [m.BlockRef(block_hash(b), len(b)) for b in blocks]
    by_hash = {r.hash: b for r, b in zip(refs, blocks, strict=True)}
    asked: list[bytes] = []

    async def go() -> None:
        stop = asyncio.Event()

        async def from_peers(h: bytes) -> bytes:
            asked.append(h)
            if len(asked) == 2:
                stop.set()  # the commit came while the second block was on its way
            return by_hash[h]

        lan._from_peers = from_peers  # type: ignore[assignment,method-assign]
        pre = await transfer.prefetch(
            refs, tmp_path, lan.scope(1), lambda h: h == refs[5].hash, stop, window=1
        )
        assert len(asked) == 2 and len(pre.done) == 2
        content = pre.tmp.read_bytes()
        offsets = list(transfer.itertools_accumulate([r.size for r in refs]))
        for i in pre.done:
            assert content[offsets[i] : offsets[i] + refs[i].size] == blocks[i]
        assert len(content) == sum(r.size for r in refs)

    asyncio.run(go())


def test_devices_asking_for_the_same_block_at_once_cost_one_disk_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two devices fetching a file together ask a third that holds it for each
    block at about the same moment: one read serves both (and one asking just
    after), within the namespace each may read, for a few seconds at most."""
    from types import SimpleNamespace

    import client.lan.node as node_module

    path = tmp_path / "f"
    path.write_bytes(b"x" * 100 + b"y" * 100)
    reads: list[int] = []
    real = node_module._read_served

    def counted(*args: object) -> bytes | None:
        reads.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(node_module, "_read_served", counted)

    async def go() -> None:
        lan = LanNode(tmp_path, LanOptions(), "", None, lambda h: [(path, 100, 100, 3, None)])  # type: ignore[arg-type]
        lan.reply = SimpleNamespace(spaces=[SimpleNamespace(ns=3, tag="t3")])  # type: ignore[assignment]
        both = await asyncio.gather(*(lan._read_block(b"h", frozenset({"t3"}), b"p" * 32) for _ in range(2)))
        assert both == [b"y" * 100] * 2 and len(reads) == 1
        assert await lan._read_block(b"h", frozenset({"t3"}), b"q" * 32) == b"y" * 100
        assert len(reads) == 1  # kept for the one asking just after
        assert await lan._read_block(b"h", frozenset({"t9"}), b"q" * 32) is None  # not theirs to read
        lan._expire(0)  # (as after RECENT_S)
        assert not lan._recent and lan._recent_bytes == 0
        assert await lan._read_block(b"h", frozenset({"t3"}), b"q" * 32) == b"y" * 100
        assert len(reads) == 2

    asyncio.run(go())


def test_every_device_asks_its_peers_for_a_block_in_the_same_order() -> None:
    """By the block's rendezvous hash with each peer's fingerprint, so two
    devices wanting a block a third holds do not both go to the third
    first; a peer not linked yet (fingerprint unknown) is asked first."""
    import hashlib
    import os
    from types import SimpleNamespace

    from client.lan.node import Peer, _asking_order

    fps = [os.urandom(32) for _ in range(3)]
    peers = [Peer("10.0.0.1", 17500 + i, static=True) for i in range(3)]
    for peer, fp in zip(peers, fps, strict=True):
        peer.link = SimpleNamespace(fingerprint=fp)  # type: ignore[assignment]
    h = os.urandom(32)
    order = _asking_order(peers, h)
    assert [p.link.fingerprint for p in order] == sorted(fps, key=lambda fp: hashlib.sha256(fp + h).digest())  # type: ignore[union-attr]
    assert _asking_order(list(reversed(peers)), h) == order  # whatever order they were found in
    orders = {tuple(id(p) for p in _asking_order(peers, os.urandom(32))) for _ in range(200)}
    assert len(orders) > 1  # depends on the block
    unlinked = Peer("10.0.0.9", 17500, static=True)
    assert _asking_order([*peers, unlinked], h)[0] is unlinked
