"""LAN sync end to end: real `ferry server` and `ferry sync` processes on
loopback with static peers, counting the block bytes the server sends
(``/metrics``); peers that refuse, lie or stall; discovery across real network
namespaces; edit hints, which need no peer."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from client.home import load_credentials, save_credentials
from client.lan.identity import load_identity
from protocol import framing
from protocol import messages as m
from protocol.chunking import chunk_bytes
from protocol.errors import ProtocolError
from protocol.hashing import content_hash
from tests.e2e.test_wire import login, nid, open_ws, recv
from tests.support.faultproxy import FaultProxy
from tests.support.lan import LoopThread, ask, digest, forge, sent, start_peer, tickets, wait_for
from tests.support.moto_server import free_port
from tests.support.servers import Device, FerryServer

MiB = 1024 * 1024
TTL = 3  # s: the server's ticket lifetime in these tests (revocations take effect within it)
# where a test counts bytes: a peer slowed down by a loaded machine is not a stalled one
PATIENT = ["--lan-timeout", "30"]


@pytest.fixture
def lan_server(make_server: Callable[..., FerryServer]) -> FerryServer:
    return make_server("file", extra=["--lan-ticket-ttl", str(TTL)])


@pytest.fixture
def live() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start `ferry sync` (live) as a device; stopped at the end of the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(device: Device, *args: str) -> subprocess.Popen[str]:
        proc = device.popen("sync", *args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def user(server: FerryServer, tmp_path: Path, name: str, *devices: str) -> list[Device]:
    r = server.admin("user", "add", name, "--password-stdin", stdin=f"{name}-pw\n")
    assert r.returncode == 0, r.stderr
    return [Device(tmp_path / f"{name}-{d}", server).login(name, f"{name}-pw", d) for d in devices]


def status(device: Device, folder: Path) -> dict[str, Any]:
    try:
        return orjson.loads((device.home / "status.json").read_bytes())["folders"][str(folder.resolve())]  # type: ignore[no-any-return]
    except (OSError, KeyError, orjson.JSONDecodeError):
        return {}


def synced(device: Device, folder: Path, name: str, want: str) -> bool:
    path = folder / name
    return status(device, folder).get("state") == "up to date" and path.exists() and digest(path) == want


def write_random(path: Path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return digest(path)


def peer(port: int) -> list[str]:
    return ["--lan-peer", f"127.0.0.1:{port}"]


# --- the server sends a file into the LAN once --------------------------------------------


def test_two_devices_second_gets_the_file_from_the_first(lan_server, live, tmp_path: Path) -> None:
    a, b = user(lan_server, tmp_path, "alice", "a", "b")
    fa, fb = tmp_path / "A", tmp_path / "B"
    want = write_random(fa / "big.bin", 100 * MiB)
    port_a = free_port()
    live(a, str(fa), "--lan-port", str(port_a))  # uploads it, then serves it
    wait_for(lambda: synced(a, fa, "big.bin", want) and status(a, fa).get("lan", {}).get("ticket"), 90,
             "A to upload big.bin")  # fmt: skip
    before = sent(lan_server)
    b.run("sync", str(fb), "--once", "--lan-port", str(free_port()), *peer(port_a), *PATIENT, check=True)
    assert digest(fb / "big.bin") == want
    assert sent(lan_server) - before == 0  # every block came from A
    lan = status(b, fb)["lan"]
    assert (lan["from_peers"], lan["from_server"]) == (100 * MiB, 0)
    shown = b.run("status", check=True).stdout
    assert "received 100.0 MiB from peers, 0 B from the server" in shown, shown


def test_three_devices_server_sends_the_file_at_most_once(lan_server, live, tmp_path: Path) -> None:
    a, b, c = user(lan_server, tmp_path, "alice", "a", "b", "c")
    fa, fb, fc = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    want = write_random(fa / "big.bin", 100 * MiB)
    a.run("sync", str(fa), "--once", "--lan", "off", check=True)  # A uploads it and leaves
    before = sent(lan_server)
    port_b, port_c = free_port(), free_port()
    live(b, str(fb), "--lan-port", str(port_b), *peer(port_c), *PATIENT)
    wait_for(lambda: synced(b, fb, "big.bin", want), 90, "B to fetch big.bin")
    c.run("sync", str(fc), "--once", "--lan-port", str(port_c), *peer(port_b), *PATIENT, check=True)
    assert digest(fc / "big.bin") == want == digest(fb / "big.bin")  # B and C converge byte-identical
    assert sent(lan_server) - before <= 100 * MiB  # the server sent it at most once
    assert status(c, fc)["lan"]["from_peers"] == 100 * MiB


def test_devices_take_a_new_file_from_its_author_and_nothing_from_the_server(
    lan_server, live, tmp_path: Path
) -> None:
    """A, B and C are up; A saves a new big file. B and C take every block
    from A (or from each other): while A uploads it and from the moment A's
    commit reaches them, when they ask for what they still lack."""
    devices = user(lan_server, tmp_path, "alice", "a", "b", "c")
    folders = [tmp_path / n for n in "ABC"]
    ports = [free_port() for _ in devices]
    for i, (device, folder) in enumerate(zip(devices, folders, strict=True)):
        others = [arg for j, port in enumerate(ports) if j != i for arg in peer(port)]
        live(device, str(folder), "--lan-port", str(ports[i]), *others, *PATIENT)
    for device, folder in zip(devices, folders, strict=True):
        wait_for(lambda d=device, f=folder: status(d, f).get("state") == "up to date"
                 and status(d, f).get("lan", {}).get("ticket"), 60, "every device to be up")  # fmt: skip
    before = sent(lan_server)
    want = write_random(folders[0] / "big.bin", 100 * MiB)
    for device, folder in zip(devices[1:], folders[1:], strict=True):
        wait_for(lambda d=device, f=folder: synced(d, f, "big.bin", want), 120, "B and C to have big.bin")
    assert sent(lan_server) - before == 0


def test_a_big_file_streams_to_a_peer_while_it_is_still_uploading(lan_server, live, tmp_path: Path) -> None:
    """Streaming sync: A announces a big file before uploading it and B fetches
    it from A meanwhile, so B holds every block before the commit exists, and
    after it the server sends B nothing."""
    a, b = user(lan_server, tmp_path, "alice", "a", "b")
    proxy = FaultProxy(lan_server.port).start()  # A reaches the server through it: the test can hold A
    try:
        save_credentials(
            a.home, dataclasses.replace(load_credentials(a.home), server=f"http://127.0.0.1:{proxy.port}")
        )
        fa, fb = tmp_path / "A", tmp_path / "B"
        port_a, port_b = free_port(), free_port()
        live(a, str(fa), "--lan-port", str(port_a), *peer(port_b), *PATIENT)
        live(b, str(fb), "--lan-port", str(port_b), *peer(port_a), *PATIENT)
        for device, folder in ((a, fa), (b, fb)):
            wait_for(lambda d=device, f=folder: status(d, f).get("state") == "up to date"
                     and status(d, f).get("lan", {}).get("ticket"), 60, "both devices to be up")  # fmt: skip
        proxy.hold_up(64 * 1024)  # the announcement goes through; the upload stalls in its first block
        before = sent(lan_server)
        want = write_random(fa / "big.bin", 24 * MiB)

        def prefetched() -> bool:
            staged = list((fb / ".ferry-staging").glob(".ferry-tmp-*"))
            return any(f.stat().st_size == 24 * MiB and digest(f) == want for f in staged)

        wait_for(prefetched, 60, "B to hold every block of big.bin while A's upload is held")
        assert not (fb / "big.bin").exists()  # no commit yet
        proxy.release_up()
        wait_for(lambda: synced(b, fb, "big.bin", want), 90, "B to place big.bin after A's commit")
        assert sent(lan_server) - before == 0  # not one block from the server
        assert status(b, fb)["lan"]["from_peers"] == 24 * MiB  # nor fetched twice
        assert not list((fb / ".ferry-staging").glob(".ferry-tmp-*"))
        # an edit: B takes early only what it lacks (the old version has the rest), not the whole file
        with open(fa / "big.bin", "r+b") as f:
            f.seek(12 * MiB)
            f.write(b"an edit")
        want = digest(fa / "big.bin")
        wait_for(lambda: synced(b, fb, "big.bin", want), 90, "B to take the edit")
        assert status(b, fb)["lan"]["from_peers"] - 24 * MiB <= 2 * 4 * MiB  # a block or two
        assert sent(lan_server) - before == 0
    finally:
        proxy.stop()


def test_an_edit_hint_lets_a_device_copy_its_version_before_the_commit(
    lan_server, live, tmp_path: Path
) -> None:
    """Edit hints (LAN sync off: a hint needs no peer): A tells the server it is
    about to read a big file it changed, and B copies the version it holds into
    its staging folder while A's upload is still held, so that after A's commit
    B writes only what changed, growing or shrinking the copy to the new size."""
    a, b = user(lan_server, tmp_path, "alice", "a", "b")
    fa, fb = tmp_path / "A", tmp_path / "B"
    old = write_random(fa / "big.bin", 24 * MiB)
    a.run("sync", str(fa), "--once", "--lan", "off", check=True)
    proxy = FaultProxy(lan_server.port).start()  # A reaches the server through it: the test can hold A
    try:
        save_credentials(
            a.home, dataclasses.replace(load_credentials(a.home), server=f"http://127.0.0.1:{proxy.port}")
        )
        live(a, str(fa), "--lan", "off")
        live(b, str(fb), "--lan", "off")
        wait_for(lambda: synced(b, fb, "big.bin", old) and status(a, fa).get("state") == "up to date", 90,
                 "both devices to hold big.bin")  # fmt: skip
        staging = fb / ".ferry-staging"
        proxy.hold_up(64 * 1024)  # the hint goes through; the upload stalls in its first block
        before = sent(lan_server)
        with open(fa / "big.bin", "r+b") as f:  # an edit in place, and 1 MiB appended
            f.seek(12 * MiB)
            f.write(b"an edit")
            f.seek(0, os.SEEK_END)
            f.write(os.urandom(MiB))
        want = digest(fa / "big.bin")

        def copied() -> bool:
            return any(
                f.stat().st_size == 24 * MiB and digest(f) == old for f in staging.glob(".ferry-tmp-*")
            )

        wait_for(copied, 60, "B to copy its version of big.bin while A's upload is held")
        assert digest(fb / "big.bin") == old  # no commit yet: B's file is as it was
        proxy.release_up()
        wait_for(lambda: synced(b, fb, "big.bin", want), 90, "B to place the edit")
        assert sent(lan_server) - before < 8 * MiB  # the changed blocks, not the file
        wait_for(lambda: not list(staging.glob(".ferry-tmp-*")), 30, "B's staging folder to be empty")
        # B edits its file while it holds a copy for A's edit: the copy is dropped, both edits kept
        old = want
        wait_for(lambda: status(a, fa).get("state") == "up to date", 60, "A to be idle")
        proxy.hold_up(64 * 1024)
        with open(fa / "big.bin", "r+b") as f:
            f.write(b"A's edit")
        theirs = digest(fa / "big.bin")
        wait_for(lambda: any(f.stat().st_size == 25 * MiB and digest(f) == old for f in staging.glob(".ferry-tmp-*")),
                 60, "B to copy its version again")  # fmt: skip
        with open(fb / "big.bin", "ab") as f:
            f.write(b"B's edit")
        mine = digest(fb / "big.bin")
        wait_for(lambda: not list(staging.glob(".ferry-tmp-*")), 30,
                 "B to drop the copy of a version it no longer has")  # fmt: skip
        proxy.release_up()
        for device, folder in ((b, fb), (a, fa)):  # whichever reached the server first keeps the name
            wait_for(lambda d=device, f=folder: sorted(digest(g) for g in f.glob("big*")) == sorted([mine, theirs])
                     and status(d, f).get("state") == "up to date", 90, "both devices to keep both edits")  # fmt: skip
        assert len(list(fb.glob("big*conflicted copy*"))) == 1
        # a shrink: the copy is cut to the new size
        os.truncate(fa / "big.bin", 10 * MiB + 5)
        want = digest(fa / "big.bin")
        wait_for(lambda: synced(b, fb, "big.bin", want), 90, "B to take the shorter version")
        assert (fb / "big.bin").stat().st_size == 10 * MiB + 5
        wait_for(lambda: not list(staging.glob(".ferry-tmp-*")), 30, "B's staging folder to be empty")
    finally:
        proxy.stop()


def test_an_edit_that_changed_nothing_takes_its_hint_back(lan_server, live, tmp_path: Path) -> None:
    """A touched big file: once A has read it and found the version it hinted
    at, A sends that version's block list after the hint, and a device copying
    that version drops its copy at once rather than after five minutes. A
    third device of the user, a raw session here, hears both and then plays
    the editor to B."""
    a, b = user(lan_server, tmp_path, "alice", "a", "b")
    fa, fb = tmp_path / "A", tmp_path / "B"
    write_random(fa / "big.bin", 24 * MiB)
    a.run("sync", str(fa), "--once", "--lan", "off", check=True)
    live(b, str(fb), "--lan", "off")
    want = digest(fa / "big.bin")
    wait_for(lambda: synced(b, fb, "big.bin", want), 90, "B to hold big.bin")
    blocks = [m.BlockRef(c.hash, len(c.data)) for c in chunk_bytes((fa / "big.bin").read_bytes())]
    base = content_hash(r.hash for r in blocks)
    staging = fb / ".ferry-staging"

    def copying() -> bool:
        return any(f.stat().st_size == 24 * MiB and digest(f) == want for f in staging.glob(".ferry-tmp-*"))

    async def run() -> None:
        token = str((await login(lan_server, "alice", "alice-pw", device=f"listener-{nid()}"))["token"])
        ws = await open_ws(lan_server, token)
        await ws.send(framing.encode(m.Hello(versions=[1], client="test", features=["incoming"])))
        welcome = await recv(ws)
        assert isinstance(welcome, m.Welcome)
        ns = next(n.ns for n in welcome.namespaces if n.path == "/")
        stat = (fa / "big.bin").stat()
        os.utime(fa / "big.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))  # a touch
        synced_a = asyncio.create_task(asyncio.to_thread(a.run, "sync", str(fa), "--once", "--lan", "off"))
        heard: list[m.Incoming] = []
        while len(heard) < 2:
            msg = await recv(ws, 60)
            if isinstance(msg, m.Incoming):
                heard.append(msg)
        assert heard == [m.Incoming(ns, [], base), m.Incoming(ns, blocks, base)], heard
        assert (await synced_a).returncode == 0
        # B's side: a hint starts a copy of its version; the block list of that same version ends it
        wait_for(lambda: not list(staging.glob(".ferry-tmp-*")), 30, "B's staging folder to be empty")
        for msg in (m.Upcoming(nid(), ns, [], base), m.Upcoming(nid(), ns, blocks, base)):
            await ws.send(framing.encode(msg))
            assert await recv(ws) == m.Ok(msg.id)
            if not msg.blocks:
                await asyncio.to_thread(wait_for, copying, 60, "B to copy its version of big.bin")
        await asyncio.to_thread(wait_for, lambda: not list(staging.glob(".ferry-tmp-*")), 30,
                                "B to drop the copy")  # fmt: skip
        await ws.close()

    asyncio.run(run())
    assert digest(fb / "big.bin") == want


# --- refusals ------------------------------------------------------------------------------


def test_peer_serves_only_valid_tickets_for_its_namespaces(lan_server, live, tmp_path: Path) -> None:
    a, a2 = user(lan_server, tmp_path, "alice", "a", "a2")
    (bob,) = user(lan_server, tmp_path, "bob", "b")
    fa = tmp_path / "A"
    f_data, g_data = os.urandom(3 * MiB), os.urandom(3 * MiB)
    (fa / "Team").mkdir(parents=True)
    (fa / "f.bin").write_bytes(f_data)
    (fa / "Team" / "g.bin").write_bytes(g_data)
    a.run("sync", str(fa), "--once", "--lan", "off", check=True)
    a.run("share", "/Team", "--with", "bob", "--role", "viewer", check=True)
    invitation = orjson.loads(bob.run("invitations", "--json", check=True).stdout)[0]["invitation"]
    bob.run("accept", str(invitation), check=True)
    port = free_port()
    live(a, str(fa), "--lan-port", str(port))
    f_block, g_block = chunk_bytes(f_data)[0], chunk_bytes(g_data)[0]
    me2, me_bob = load_identity(tmp_path / "id-a2"), load_identity(tmp_path / "id-bob")

    async def check() -> None:
        alice2 = await tickets(a2, me2)
        key = alice2.server_key

        async def served() -> bool:  # a fresh ticket each try: A may take longer than TTL to come up
            fresh = await tickets(a2, me2)
            return await ask(port, me2, fresh.ticket, key, f_block.hash) == bytes(f_block.data)

        deadline = time.monotonic() + 60
        while not await served():  # A is up and serving f.bin once it has synced
            assert time.monotonic() < deadline, "A never served f.bin"
            await asyncio.sleep(0.2)
        # no ticket, a ticket signed by another key, an expired one, someone else's
        refused = "refused us: not vouched for by the server: "
        assert await ask(port, me2, "", key, f_block.hash) == _refusal(port, refused + "no ticket")
        other = forge(
            _other_key(tmp_path), me2, frozenset(s.tag for s in alice2.spaces), int(time.time()) + 60
        )
        assert await ask(port, me2, other, key, f_block.hash) == _refusal(
            port, refused + "ticket not signed by this server"
        )
        key_file = lan_server.data_dir / "lan-signing-key.pem"
        expired = forge(key_file, me2, frozenset(s.tag for s in alice2.spaces), int(time.time()) - 1)
        assert await ask(port, me2, expired, key, f_block.hash) == _refusal(port, refused + "ticket expired")
        # (tickets live TTL = 3 s: each check below that needs a live one takes a fresh one, so a
        # loaded machine's slow steps above cannot turn the refusal checked into "ticket expired")
        alice2 = await tickets(a2, me2)
        stolen = await ask(port, me_bob, alice2.ticket, key, f_block.hash)  # shown with bob's TLS key
        assert stolen == _refusal(port, refused + "ticket names another TLS key")
        # bob's ticket names the shared folder, not alice's own files
        bobs = await tickets(bob, me_bob)
        assert await ask(port, me_bob, bobs.ticket, key, g_block.hash) == bytes(g_block.data)
        assert await ask(port, me_bob, bobs.ticket, key, f_block.hash) == "not_found"
        # revoked: a new ticket leaves the folder out, and the old one runs out within TTL
        assert a.run("unshare", "/Team", "--user", "bob").returncode == 0
        fresh = await tickets(bob, me_bob)
        assert len(fresh.spaces) == len(bobs.spaces) - 1
        assert await ask(port, me_bob, fresh.ticket, key, g_block.hash) == "not_found"
        # a revoked device gets no new ticket; the one it holds runs out within TTL too
        device_id = orjson.loads((a2.home / "credentials.json").read_bytes())["device_id"]
        assert (await asyncio.to_thread(lan_server.admin, "device", "revoke", str(device_id))).returncode == 0
        with pytest.raises(ProtocolError, match="revoked"):
            await tickets(a2, me2)
        while time.time() <= max(bobs.expires_s, alice2.expires_s):
            await asyncio.sleep(0.1)
        ran_out = _refusal(port, refused + "ticket expired")
        assert await ask(port, me_bob, bobs.ticket, key, g_block.hash) == ran_out
        assert await ask(port, me2, alice2.ticket, key, f_block.hash) == ran_out

    asyncio.run(check())


def _refusal(port: int, why: str) -> str:
    return f"refused: peer 127.0.0.1:{port} {why}"


def _other_key(tmp_path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path / "other.pem"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return path


@pytest.mark.parametrize("behaviour", ["corrupt", "stall"])
def test_lying_or_stalling_peer_costs_a_fallback_not_the_file(
    lan_server, tmp_path: Path, behaviour: str
) -> None:
    a, b, evil = user(lan_server, tmp_path, "alice", "a", "b", "evil")
    fa, fb = tmp_path / "A", tmp_path / "B"
    want = write_random(fa / "f.bin", 8 * MiB)
    a.run("sync", str(fa), "--once", "--lan", "off", check=True)
    asked: list[bytes] = []

    async def read_block(h: bytes, allowed: frozenset[str], asker: bytes) -> bytes | None:
        asked.append(h)
        if behaviour == "stall":
            await asyncio.Event().wait()
        return secrets.token_bytes(1024)  # a block of the right namespace, wrong bytes

    me = load_identity(tmp_path / "id-evil")
    thread = LoopThread()
    try:
        reply = thread.run(tickets(evil, me))
        server = thread.run(start_peer(me, reply, read_block))
        port = server.sockets[0].getsockname()[1]
        before = sent(lan_server)
        started = time.monotonic()
        b.run("sync", str(fb), "--once", "--lan-port", str(free_port()), *peer(port), check=True)
        elapsed = time.monotonic() - started
    finally:
        thread.close()
    assert digest(fb / "f.bin") == want
    assert asked, "the peer was never asked"
    assert sent(lan_server) - before == 8 * MiB  # all of it from the server
    lan = status(b, fb)["lan"]
    assert lan["from_peers"] == 0
    (shown,) = lan["peers"]
    why = "sent a corrupted block" if behaviour == "corrupt" else "timed out"
    assert why in shown["last_trouble"], shown  # (set aside; maybe tried again by the time it finished)
    assert elapsed < 60, f"a {behaviour} peer held the sync for {elapsed:.0f}s"  # a hang, not a speed check


def test_static_peer_that_never_answers_tls(lan_server, tmp_path: Path) -> None:
    """A listener that accepts and says nothing: the handshake times out, the file comes from the server."""
    a, b = user(lan_server, tmp_path, "alice", "a", "b")
    fa, fb = tmp_path / "A", tmp_path / "B"
    want = write_random(fa / "f.bin", 2 * MiB)
    a.run("sync", str(fa), "--once", "--lan", "off", check=True)
    import socket

    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        b.run("sync", str(fb), "--once", "--lan-port", str(free_port()), *peer(mute.getsockname()[1]),
              check=True, timeout=60)  # fmt: skip
    assert digest(fb / "f.bin") == want
    assert "timed out" in status(b, fb)["lan"]["peers"][0]["last_trouble"]


# --- discovery -----------------------------------------------------------------------------


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair (10.213.0.1 and .2/24), removed after."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("creating network namespaces needs root and iproute2 (`ip netns`)")
    tag = f"fy{os.getpid() % 100000}"
    ns = (f"{tag}a", f"{tag}b")
    setup = [
        ["ip", "netns", "add", ns[0]], ["ip", "netns", "add", ns[1]],
        ["ip", "link", "add", f"{tag}va", "type", "veth", "peer", "name", f"{tag}vb"],
        ["ip", "link", "set", f"{tag}va", "netns", ns[0]], ["ip", "link", "set", f"{tag}vb", "netns", ns[1]],
        ["ip", "-n", ns[0], "addr", "add", "10.213.0.1/24", "brd", "+", "dev", f"{tag}va"],
        ["ip", "-n", ns[1], "addr", "add", "10.213.0.2/24", "brd", "+", "dev", f"{tag}vb"],
        ["ip", "-n", ns[0], "link", "set", f"{tag}va", "up"], ["ip", "-n", ns[1], "link", "set", f"{tag}vb", "up"],
        ["ip", "-n", ns[0], "link", "set", "lo", "up"], ["ip", "-n", ns[1], "link", "set", "lo", "up"],
    ]  # fmt: skip
    try:
        for cmd in setup:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"cannot set up network namespaces here ({' '.join(cmd)}: {r.stderr.strip()})")
        yield ns
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_two_devices_find_each_other_by_broadcast_alone(two_namespaces: tuple[str, str]) -> None:
    key = secrets.token_hex(32)
    repo = Path(__file__).resolve().parents[2]
    probes = [
        subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.support.discovery_probe", key,
                          str(4000 + i), "20"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, ns in enumerate(two_namespaces)
    ]  # fmt: skip
    heard = [p.communicate(timeout=40) for p in probes]
    assert [p.returncode for p in probes] == [0, 0], heard
    assert heard[0][0].split() == ["10.213.0.2", "4001"]
    assert heard[1][0].split() == ["10.213.0.1", "4000"]


def test_strangers_do_not_find_each_other(two_namespaces: tuple[str, str]) -> None:
    """Devices of namespaces the other cannot read: each one's announcements are ignored."""
    repo = Path(__file__).resolve().parents[2]
    probes = [
        subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.support.discovery_probe",
                          secrets.token_hex(32), "4000", "3"], cwd=repo, stdout=subprocess.PIPE, text=True)
        for ns in two_namespaces
    ]  # fmt: skip
    assert [p.wait(timeout=30) for p in probes] == [1, 1]


# --- settings ------------------------------------------------------------------------------


def test_lan_port_in_use_falls_back_and_bad_flags_are_refused(lan_server, tmp_path: Path) -> None:
    import socket

    (a,) = user(lan_server, tmp_path, "alice", "a")
    folder = tmp_path / "A"
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        a.run("sync", str(folder), "--once", "--lan-port", str(port), check=True)
    lan = status(a, folder)["lan"]
    assert lan["port"] != port and f"port {port} is in use" in lan["note"]
    assert f"port {port} is in use" in a.run("status", check=True).stdout
    a.run("sync", str(folder), "--once", "--lan", "off", check=True)
    assert "lan" not in status(a, folder)  # nothing listened, nothing was asked
    for bad in (["--lan-peer", "nohost"], ["--lan-peer", "h:99999"], ["--lan", "maybe"], ["--lan-port", "0"]):
        r = a.run("sync", str(folder), "--once", *bad)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("ferry sync: error:"), (
            r.stderr
        )
    r = a.run("sync", str(folder), "--once", "--lan-timeout", "0")
    assert r.returncode == 2 and "--lan-timeout must be more than 0" in r.stderr.splitlines()[-1]


def test_devices_on_one_machine_find_each_other_on_the_default_port(lan_server, live, tmp_path: Path) -> None:
    """No --lan-peer: B hears A's broadcast (both on UDP 17500), and A's TCP port
    17500 may be taken by a device of another test: each serves where it can."""
    from client.lan.discovery import broadcast_addresses

    if len(broadcast_addresses()) < 2:
        pytest.skip("no network interface with a broadcast address here (only loopback)")
    a, b = user(lan_server, tmp_path, "alice", "a", "b")
    fa, fb = tmp_path / "A", tmp_path / "B"
    want = write_random(fa / "f.bin", 4 * MiB)
    live(a, str(fa))
    wait_for(lambda: synced(a, fa, "f.bin", want) and status(a, fa).get("lan", {}).get("ticket"), 60, "A")
    b.run("sync", str(fb), "--once", check=True)
    assert digest(fb / "f.bin") == want
    lan = status(b, fb)["lan"]
    assert lan["from_peers"] == 4 * MiB, lan
    assert any(p["state"] == "connected" and not p["static"] for p in lan["peers"]), lan
