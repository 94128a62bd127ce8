"""Who may reach a shared folder, checked on the wire against a real server.

Each check of the issue's security list is its own test. The frames are
written by hand (no client code), as any client would send them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from protocol import framing
from protocol import messages as m
from protocol.errors import ErrorCode
from tests.e2e.test_wire import key, login, new_user, nid, open_ws, recv, session, sha
from tests.support.servers import FerryServer

SECRET = b"alice's secret plan" * 100


async def call(ws: ClientConnection, msg: m.Message) -> Any:
    """Send; the reply to this request (pushes skipped)."""
    await ws.send(framing.encode(msg))
    while True:
        reply = await recv(ws)
        if isinstance(reply, m.Changed | m.NamespacesChanged):
            continue
        assert getattr(reply, "id", None) == msg.id, reply  # type: ignore[attr-defined]
        return reply


async def put_block(ws: ClientConnection, data: bytes) -> Any:
    req = nid()
    await ws.send(framing.encode_block(framing.KIND_PUT, req, sha(data), data))
    while True:
        reply = await recv(ws)
        if getattr(reply, "id", None) == req:
            return reply


def err(reply: Any, code: ErrorCode) -> m.Error:
    assert isinstance(reply, m.Error), f"expected a {code} error, got {reply!r}"
    assert reply.code == code.value, f"expected {code}, got {reply.code}: {reply.message}"
    return reply


async def commit(ws: ClientConnection, path: str, data: bytes, ns: int | None = None,
                 parent: int | None = None) -> Any:  # fmt: skip
    return await call(ws, m.Commit(nid(), key(), path, parent, len(data), 1_700_000_000_000_000_000,
                                   [sha(data)], ns=ns))  # fmt: skip


@dataclass
class World:
    server: FerryServer
    alice: ClientConnection
    bob: ClientConnection  # an editor
    carol: ClientConnection  # a viewer
    eve: ClientConnection  # no member
    ns: int  # the shared folder


@pytest.fixture
def world(make_server: Callable[..., FerryServer]) -> Any:
    server = make_server("file")

    async def setup() -> World:
        tokens = [await new_user(server, n) for n in ("alice", "bob", "carol", "eve")]
        alice, bob, carol, eve = [await session(server, t) for t in tokens]
        assert isinstance(await put_block(alice, SECRET), m.Ok)
        assert isinstance(await commit(alice, "/Team/secret.txt", SECRET), m.Committed)
        shared = await call(alice, m.Share(nid(), "/Team", "bob", "editor"))
        assert isinstance(shared, m.Shared), shared
        assert isinstance(await call(alice, m.Share(nid(), "/Team", "carol", "viewer")), m.Shared)
        for ws in (bob, carol):
            accepted = await call(ws, m.Accept(nid(), shared.ns))
            assert isinstance(accepted, m.Shared) and accepted.path == "/Team", accepted
        return World(server, alice, bob, carol, eve, shared.ns)

    return setup


def same_answer(a: m.Error, b: m.Error, *ids: int) -> None:
    """Two errors a person could not tell apart (ids of namespaces aside)."""

    def plain(e: m.Error) -> tuple[str, str]:
        text = e.message
        for i in ids:
            text = re.sub(rf"\b{i}\b", "N", text)
        return e.code, text

    assert plain(a) == plain(b), (a, b)


async def test_non_member_cannot_list_a_shared_folder(world: Any) -> None:
    w = await world()
    nobody = w.ns + 1000
    for make in (lambda ns: m.ListFolder(nid(), "/", ns=ns), lambda ns: m.ListChanges(nid(), 0, ns=ns),
                 lambda ns: m.Stat(nid(), "/secret.txt", ns=ns), lambda ns: m.ListDeleted(nid(), "/", ns=ns),
                 lambda ns: m.Snapshot(nid(), "/", time.time_ns(), ns=ns)):  # fmt: skip
        real = err(await call(w.eve, make(w.ns)), ErrorCode.NOT_FOUND)
        same_answer(real, err(await call(w.eve, make(nobody)), ErrorCode.NOT_FOUND), w.ns, nobody)
    # and by path: eve's /Team is just a path she does not have
    err(await call(w.eve, m.Stat(nid(), "/Team/secret.txt")), ErrorCode.NOT_FOUND)
    listing = await call(w.eve, m.ListFolder(nid(), "/"))
    assert isinstance(listing, m.Listing) and listing.entries == []
    assert isinstance(await call(w.bob, m.ListFolder(nid(), "/", ns=w.ns)), m.Listing)


async def test_non_member_cannot_read_a_shared_file(world: Any) -> None:
    w = await world()
    for make in (
        lambda ns: m.GetVersion(nid(), "/secret.txt", ns=ns),
        lambda ns: m.History(nid(), "/secret.txt", ns=ns),
    ):
        err(await call(w.eve, make(w.ns)), ErrorCode.NOT_FOUND)
    got = await call(w.carol, m.GetVersion(nid(), "/Team/secret.txt"))
    assert isinstance(got, m.VersionReply) and got.info.entry.size == len(SECRET)


async def test_non_member_cannot_download_its_blocks(world: Any) -> None:
    w = await world()
    real = err(await call(w.eve, m.GetBlock(nid(), sha(SECRET))), ErrorCode.NOT_FOUND)
    nothing = err(await call(w.eve, m.GetBlock(nid(), sha(b"nobody has this"))), ErrorCode.NOT_FOUND)
    assert real.message.replace(sha(SECRET).hex(), "H") == nothing.message.replace(
        sha(b"nobody has this").hex(), "H"
    )
    await w.carol.send(framing.encode(m.GetBlock(4242, sha(SECRET))))
    while True:
        frame = await recv(w.carol)
        if isinstance(frame, framing.BlockFrame):
            assert bytes(frame.data) == SECRET
            break


async def test_non_member_cannot_commit_into_a_shared_folder(world: Any) -> None:
    w = await world()
    data = b"eve's payload"
    assert isinstance(await put_block(w.eve, data), m.Ok)
    real = err(await commit(w.eve, "/evil.txt", data, ns=w.ns), ErrorCode.NOT_FOUND)
    same_answer(real, err(await commit(w.eve, "/evil.txt", data, ns=w.ns + 1000), ErrorCode.NOT_FOUND),
                w.ns, w.ns + 1000)  # fmt: skip
    for msg in (m.Mkdir(nid(), key(), "/x", ns=w.ns), m.Delete(nid(), key(), "/secret.txt", ns=w.ns),
                m.Move(nid(), key(), "/secret.txt", "/y", ns=w.ns)):  # fmt: skip
        err(await call(w.eve, msg), ErrorCode.NOT_FOUND)
    # her /Team is her own folder, not alice's
    assert isinstance(await commit(w.eve, "/Team/evil.txt", data), m.Committed)
    listing = await call(w.alice, m.ListFolder(nid(), "/Team"))
    assert [e.path for e in listing.entries] == ["/Team/secret.txt"]


async def test_non_member_cannot_restore_in_a_shared_folder(world: Any) -> None:
    w = await world()
    assert isinstance(await call(w.bob, m.Delete(nid(), key(), "/Team/secret.txt")), m.Committed)
    err(await call(w.eve, m.Restore(nid(), key(), "/secret.txt", ns=w.ns)), ErrorCode.NOT_FOUND)
    err(await call(w.eve, m.Rewind(nid(), key(), "/", time.time_ns(), ns=w.ns)), ErrorCode.NOT_FOUND)
    err(await call(w.carol, m.Restore(nid(), key(), "/Team/secret.txt")), ErrorCode.READ_ONLY)
    assert isinstance(await call(w.bob, m.Restore(nid(), key(), "/Team/secret.txt")), m.Restored)


async def test_non_member_cannot_learn_that_a_shared_folder_exists(world: Any) -> None:
    w = await world()
    eve = await session(w.server, await new_user(w.server, "eve2"))
    assert [n.path for n in eve.welcome.namespaces] == ["/"]  # type: ignore[attr-defined]
    err(await call(eve, m.ListMembers(nid(), "/Team")), ErrorCode.NOT_FOUND)
    err(await call(eve, m.Leave(nid(), "/Team")), ErrorCode.NOT_FOUND)
    err(await call(eve, m.Accept(nid(), w.ns)), ErrorCode.NOT_FOUND)
    err(await call(eve, m.CreateLink(nid(), "/Team/secret.txt")), ErrorCode.NOT_FOUND)
    invitations = await call(eve, m.ListInvitations(nid()))
    assert invitations.invitations == []
    # a made-up link token is the same 404 as any other
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{w.server.url}/s/fl_{'x' * 32}")
    assert r.status_code == 404 and r.text == "not found"


async def test_blocks_of_others_are_never_already_stored(world: Any) -> None:
    w = await world()
    asked = await call(w.eve, m.QueryBlocks(nid(), [sha(SECRET)]))
    assert asked.missing == [sha(SECRET)]
    # citing the hash without the bytes does not make the file hers
    err(await commit(w.eve, "/stolen.txt", SECRET), ErrorCode.MISSING_BLOCKS)
    # members can read it, so it is stored for them
    assert (await call(w.carol, m.QueryBlocks(nid(), [sha(SECRET)]))).missing == []


async def test_viewer_commit_is_refused(world: Any) -> None:
    w = await world()
    data = b"carol's edit"
    assert isinstance(await put_block(w.carol, data), m.Ok)
    refused = err(await commit(w.carol, "/Team/secret.txt", data), ErrorCode.READ_ONLY)
    assert "viewer" in refused.message
    for msg in (m.Mkdir(nid(), key(), "/Team/x"), m.Delete(nid(), key(), "/Team/secret.txt"),
                m.Move(nid(), key(), "/Team/secret.txt", "/Team/y"),
                m.CommitBatch(nid(), key(), [m.FileCommit("/a", None, len(data), 1, [sha(data)])], ns=w.ns)):  # fmt: skip
        err(await call(w.carol, msg), ErrorCode.READ_ONLY)
    # nor move it out (that deletes it in the shared folder)
    err(await call(w.carol, m.Move(nid(), key(), "/Team/secret.txt", "/mine.txt")), ErrorCode.READ_ONLY)
    assert isinstance(await commit(w.bob, "/Team/bob.txt", SECRET), m.Committed)


async def test_revoked_member_loses_access_on_an_open_connection(world: Any) -> None:
    w = await world()
    assert isinstance(await call(w.bob, m.ListChanges(nid(), 0, ns=w.ns)), m.Changes)
    assert isinstance(await call(w.alice, m.Unshare(nid(), "/Team", "bob")), m.Ok)
    # the very next request on the same socket is refused
    err(await call(w.bob, m.ListChanges(nid(), 0, ns=w.ns)), ErrorCode.NOT_FOUND)
    err(await commit(w.bob, "/Team/late.txt", SECRET), ErrorCode.MISSING_BLOCKS)  # now his own /Team
    err(await commit(w.bob, "/late.txt", SECRET, ns=w.ns), ErrorCode.NOT_FOUND)
    # pushes of the folder stop
    assert isinstance(await commit(w.alice, "/Team/after.txt", SECRET), m.Committed)
    pushed: list[Any] = []
    with contextlib.suppress(TimeoutError):
        while True:
            pushed.append(await recv(w.bob, timeout=2))
    assert not [p for p in pushed if isinstance(p, m.Changed) and p.ns == w.ns], pushed


async def test_revoke_pushes_the_new_namespace_list(world: Any) -> None:
    w = await world()
    await call(w.bob, m.Ping(nid()))
    await w.alice.send(framing.encode(m.Unshare(nid(), "/Team", "bob")))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = await recv(w.bob)
        if isinstance(msg, m.NamespacesChanged):
            assert [n.path for n in msg.namespaces] == ["/"]
            return
    raise AssertionError("bob's session was not told")


async def _link(w: World, **kw: Any) -> tuple[str, m.LinkCreated]:
    made = await call(w.alice, m.CreateLink(nid(), "/Team/secret.txt", **kw))
    assert isinstance(made, m.LinkCreated), made
    return f"{w.server.url}/s/{made.token}", made


async def test_revoked_link_is_404_at_once(world: Any) -> None:
    w = await world()
    url, made = await _link(w)
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == SECRET
        # only its owner can revoke it: to anyone else it does not exist
        err(await call(w.bob, m.RevokeLink(nid(), made.info.link)), ErrorCode.NOT_FOUND)
        assert isinstance(await call(w.alice, m.RevokeLink(nid(), made.info.link)), m.Ok)
        r = await http.get(url)
        assert (r.status_code, r.text) == (404, "not found")
        r = await http.get(url, headers={"Range": "bytes=0-3"})
        assert (r.status_code, r.text) == (404, "not found")


async def test_expired_link_is_404(world: Any) -> None:
    w = await world()
    url, _ = await _link(w, expires_s=1)
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == SECRET
        await asyncio.sleep(1.2)
        r = await http.get(url)
    assert (r.status_code, r.text) == (404, "not found")


async def test_wrong_link_password_is_rate_limited(world: Any) -> None:
    w = await world()
    url, made = await _link(w, password="hunter2")
    assert made.info.password
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).status_code == 401
        for _ in range(5):
            assert (await http.get(url, auth=("", "wrong"))).status_code == 401
        for password in ("wrong", "hunter2"):
            r = await http.get(url, auth=("", password))
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # the database holds the count, so every server process sees it
    assert "too many" in r.text


async def test_link_tokens_are_random_and_stored_hashed(world: Any) -> None:
    w = await world()
    _, made = await _link(w)
    token = made.token
    assert len(token) >= 32 and token.startswith("fl_")
    conn = await asyncpg.connect(w.server.database_url)
    try:
        stored = await conn.fetchval("SELECT token_hash FROM links")
        everything = str(await conn.fetch("SELECT * FROM links"))
    finally:
        await conn.close()
    assert bytes(stored) == hashlib.sha256(token.encode()).digest() and token not in everything


async def test_parallel_password_guesses_get_no_more_tries(world: Any) -> None:
    w = await world()
    url, _ = await _link(w, password="hunter2")
    async with httpx.AsyncClient() as http:
        # right passwords give their try back: downloads by those who know it never lock the link
        for _ in range(8):
            assert (await http.get(url, auth=("", "hunter2"))).content == SECRET
        answers = await asyncio.gather(*(http.get(url, auth=("", f"guess{i}")) for i in range(20)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(401) == 5 and codes.count(429) == 15, codes


# --- the same checks over the HTTP API ------------------------------------------------

NO_SUCH_NS = 987_654_321


async def _http_world(server: FerryServer) -> tuple[int, str, str, str]:
    """Alice shares /Team (holding SECRET) with bob; eve is no member. Returns the
    shared namespace, eve's and bob's tokens and the secret block's hash."""
    alice_token, eve_token, bob_token = [await new_user(server, n) for n in ("alice", "eve", "bob")]
    alice = await session(server, alice_token)
    assert isinstance(await put_block(alice, SECRET), m.Ok)
    assert isinstance(await commit(alice, "/Team/secret.txt", SECRET), m.Committed)
    shared = await call(alice, m.Share(nid(), "/Team", "bob", "editor"))
    assert isinstance(shared, m.Shared), shared
    bob = await session(server, bob_token)
    assert isinstance(await call(bob, m.Accept(nid(), shared.ns)), m.Shared)
    return shared.ns, eve_token, bob_token, sha(SECRET).hex()


def _requests(ns: int, h: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {
        "list": ("GET", "/list", {"params": {"ns": ns, "path": "/"}}),
        "stat": ("GET", "/stat", {"params": {"ns": ns, "path": "/secret.txt"}}),
        "download": ("GET", "/download", {"params": {"ns": ns, "path": "/secret.txt"}}),
        "history": ("GET", "/history", {"params": {"ns": ns, "path": "/secret.txt"}}),
        "changes": ("GET", "/changes", {"params": {"cursor": f"c1.{ns}.0"}}),
        "commit": (
            "POST",
            "/commit",
            {
                "json": {
                    "ns": ns,
                    "path": "/evil.txt",
                    "parent": None,
                    "size": len(SECRET),
                    "mtime_ns": 1,
                    "blocks": [h],
                    "key": "k1",
                }
            },
        ),
        "restore": ("POST", "/restore", {"json": {"ns": ns, "path": "/secret.txt", "key": "k2"}}),
        "mkdir": ("POST", "/mkdir", {"json": {"ns": ns, "path": "/evil", "key": "k3"}}),
    }


@pytest.mark.parametrize(
    "what", ["list", "stat", "download", "history", "changes", "commit", "restore", "mkdir"]
)
def test_non_member_over_the_http_api_gets_what_a_missing_folder_gets(
    make_server: Callable[..., FerryServer], what: str
) -> None:
    server = make_server("file")

    async def run() -> None:
        ns, eve, bob, h = await _http_world(server)
        base = server.url + "/api/v1"
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=10) as http:
            method, route, kw = _requests(ns, h)[what]
            theirs = await http.request(method, route, headers={"Authorization": f"Bearer {eve}"}, **kw)
            method, route, kw = _requests(NO_SUCH_NS, h)[what]
            missing = await http.request(method, route, headers={"Authorization": f"Bearer {eve}"}, **kw)
            assert theirs.status_code == missing.status_code == 404, (theirs.text, missing.text)
            assert theirs.json()["code"] == missing.json()["code"]
            assert SECRET[:20] not in theirs.content and "secret" not in theirs.text
            # a member is let through by the very same request (so the 404 above is the rule, not a typo)
            if what in ("list", "stat", "download", "history", "changes"):
                method, route, kw = _requests(ns, h)[what]
                member = await http.request(method, route, headers={"Authorization": f"Bearer {bob}"}, **kw)
                assert member.status_code == 200, member.text

    asyncio.run(run())


def test_blocks_of_a_shared_folder_are_not_served_to_non_members_over_http(
    make_server: Callable[..., FerryServer],
) -> None:
    server = make_server("file")

    async def run() -> None:
        _, eve, bob, h = await _http_world(server)
        async with httpx.AsyncClient(base_url=server.url + "/api/v1", trust_env=False, timeout=10) as http:
            theirs = await http.get(f"/blocks/{h}", headers={"Authorization": f"Bearer {eve}"})
            unknown = await http.get(f"/blocks/{'ab' * 32}", headers={"Authorization": f"Bearer {eve}"})
            assert theirs.status_code == unknown.status_code == 404 and SECRET[:20] not in theirs.content
            missing = await http.post("/blocks/missing", json={"hashes": [h]},
                                      headers={"Authorization": f"Bearer {eve}"})  # fmt: skip
            assert missing.json()["missing"] == [h]  # never "already stored" to eve
            member = await http.get(f"/blocks/{h}", headers={"Authorization": f"Bearer {bob}"})
            assert member.status_code == 200 and member.content == SECRET
            listed = await http.get("/namespaces", headers={"Authorization": f"Bearer {bob}"})
            assert {(n["path"], n["role"]) for n in listed.json()["namespaces"]} == {
                ("/", "owner"),
                ("/Team", "editor"),
            }
            listed = await http.get("/namespaces", headers={"Authorization": f"Bearer {eve}"})
            assert [n["path"] for n in listed.json()["namespaces"]] == ["/"]  # eve learns nothing of /Team

    asyncio.run(run())


async def incoming_session(server: FerryServer, name: str) -> ClientConnection:
    """Another device of ``name`` whose hello takes streaming-sync pushes."""
    token = str((await login(server, name, device=f"{name}-{nid()}"))["token"])
    ws = await open_ws(server, token)
    await ws.send(framing.encode(m.Hello(versions=[1], client="test", features=["incoming"])))
    assert isinstance(await recv(ws), m.Welcome)
    return ws


async def test_an_upcoming_upload_is_told_only_to_the_namespaces_other_devices(world: Any) -> None:
    w = await world()
    blocks = [m.BlockRef(sha(SECRET), len(SECRET))]
    bob2, eve2, alice2 = [await incoming_session(w.server, n) for n in ("bob", "eve", "alice")]
    assert isinstance(await call(w.alice, m.Upcoming(nid(), w.ns, blocks)), m.Ok)
    for ws in (bob2, alice2):  # a member's devices that take the push, the uploader's other device too
        pushed = await recv(ws)
        assert pushed == m.Incoming(w.ns, blocks), pushed
    # not the uploading session, nor a stranger, nor a device that did not ask for such pushes
    for ws in (w.alice, eve2, w.bob):
        assert isinstance(await call(ws, m.Ping(nid())), m.Pong)
    # only a device that may write there announces, and only blocks of a block's size
    err(await call(w.carol, m.Upcoming(nid(), w.ns, blocks)), ErrorCode.READ_ONLY)
    err(await call(w.eve, m.Upcoming(nid(), w.ns, blocks)), ErrorCode.NOT_FOUND)
    err(await call(w.bob, m.Upcoming(nid(), w.ns, [m.BlockRef(sha(SECRET), 0)])), ErrorCode.BAD_REQUEST)
    # an edit hint: no blocks yet, only the version being replaced; passed on to the same devices
    base = sha(b"the version before")
    assert isinstance(await call(w.alice, m.Upcoming(nid(), w.ns, [], base)), m.Ok)
    for ws in (bob2, alice2):
        pushed = await recv(ws)
        assert pushed == m.Incoming(w.ns, [], base), pushed
    err(await call(w.carol, m.Upcoming(nid(), w.ns, [], base)), ErrorCode.READ_ONLY)
    err(await call(w.eve, m.Upcoming(nid(), w.ns, [], base)), ErrorCode.NOT_FOUND)
    for bad in ({"blocks": []}, {"blocks": [], "base": "ab" * 31}):  # nothing announced; not a hash
        await w.bob.send(orjson.dumps({"type": "upcoming", "id": 7, "ns": w.ns, **bad}).decode())
        err(await recv(w.bob), ErrorCode.BAD_REQUEST)
    for ws in (bob2, eve2, alice2):
        assert isinstance(await call(ws, m.Ping(nid())), m.Pong)  # nothing was told of those
        await ws.close()
