"""The wire protocol, end to end: raw WebSocket frames against a real
`ferry server` process (real PostgreSQL; real S3 via moto where asked).

Every test speaks the protocol by hand (no client code), so what is checked
is what any client — ours or someone else's — would see on the wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import os
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from protocol import framing
from protocol import messages as m
from protocol.errors import ErrorCode
from tests.support.servers import FerryServer, drop

TIMEOUT = 10.0
_ids = itertools.count(1)


def nid() -> int:
    return next(_ids)


def key() -> str:
    return uuid.uuid4().hex


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ws_url(server: FerryServer) -> str:
    return server.url.replace("http://", "ws://", 1) + "/ws"


# --- accounts ---------------------------------------------------------------------


async def add_user(server: FerryServer, name: str, password: str = "pw") -> None:
    r = await asyncio.to_thread(server.admin, "user", "add", name, "--password-stdin", stdin=password + "\n")
    assert r.returncode == 0, r.stderr


async def login(server: FerryServer, name: str, password: str = "pw", device: str = "wire") -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as http:
        r = await http.post(
            f"{server.url}/api/v1/login", json={"user": name, "password": password, "device": device}
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"] and isinstance(body["device_id"], int)
    return body


async def new_user(server: FerryServer, name: str) -> str:
    """Create ``name`` and log one device in; its token."""
    await add_user(server, name)
    return str((await login(server, name))["token"])


# --- raw WebSocket ---------------------------------------------------------------------


def open_ws(server: FerryServer, token: str | None, **kw: Any) -> Any:
    headers = {"Authorization": "Bearer " + token} if token is not None else None
    return connect(
        ws_url(server),
        additional_headers=headers,
        compression=None,
        proxy=None,
        max_size=None,
        open_timeout=TIMEOUT,
        **kw,
    )


class _SeesCloseFrame(ClientConnection):
    """A connection that signals the moment the server's close frame arrives
    (even while our own send is still stuck in the transport)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.close_frame = asyncio.Event()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
            self.close_frame.set()
        super().process_event(event)


async def session(server: FerryServer, token: str, **kw: Any) -> ClientConnection:
    """Connect, say hello, check the welcome; the open connection."""
    ws = await open_ws(server, token, **kw)
    await ws.send(framing.encode(m.Hello(versions=[1], client="test_wire")))
    welcome = await recv(ws)
    assert isinstance(welcome, m.Welcome), welcome
    assert welcome.version == 1
    ws.welcome = welcome  # type: ignore[attr-defined]
    return ws


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> m.Message | framing.BlockFrame:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    if isinstance(frame, bytes):
        return framing.decode_block(frame)
    return framing.decode(frame)


async def exchange(ws: ClientConnection, frame: str | bytes, req_id: int | None) -> Any:
    """Send a raw frame; the reply for ``req_id`` (``changed`` pushes skipped)."""
    await ws.send(frame)
    while True:
        reply = await recv(ws)
        if isinstance(reply, m.Changed):
            continue
        assert getattr(reply, "id", None) == req_id, f"expected a reply to {req_id}, got {reply!r}"
        return reply


async def call(ws: ClientConnection, msg: m.Message) -> Any:
    return await exchange(ws, framing.encode(msg), getattr(msg, "id", None))


async def put_block(ws: ClientConnection, data: bytes, h: bytes | None = None) -> Any:
    req = nid()
    return await exchange(ws, framing.encode_block(framing.KIND_PUT, req, h or sha(data), data), req)


def err(reply: Any, code: ErrorCode) -> m.Error:
    assert isinstance(reply, m.Error), f"expected a {code} error, got {reply!r}"
    assert reply.code == code.value, f"expected {code}, got {reply.code}: {reply.message}"
    return reply


def commit_msg(path: str, blocks: list[bytes], size: int, parent: int | None = None, **kw: Any) -> m.Commit:
    return m.Commit(
        id=nid(), key=kw.pop("key", None) or key(), path=path, parent=parent, size=size,
        mtime_ns=kw.pop("mtime_ns", 1_700_000_000_000_000_000), blocks=blocks, **kw,
    )  # fmt: skip


def _with_id(msg: m.Commit) -> m.Commit:
    """The same request (same key) under a new request id."""
    return dataclasses.replace(msg, id=nid())


async def upload_and_commit(
    ws: ClientConnection, path: str, data: bytes, parent: int | None = None
) -> m.Committed:
    assert isinstance(await put_block(ws, data), m.Ok)
    reply = await call(ws, commit_msg(path, [sha(data)], len(data), parent))
    assert isinstance(reply, m.Committed), reply
    return reply


async def stat(ws: ClientConnection, path: str) -> Any:
    return await call(ws, m.Stat(id=nid(), path=path))


async def all_changes(ws: ClientConnection) -> list[m.Entry]:
    reply = await call(ws, m.ListChanges(id=nid(), since=0))
    assert isinstance(reply, m.Changes) and not reply.has_more, reply
    return reply.entries


async def expect_closed(ws: ClientConnection) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    return closed.value


@pytest.fixture
def srv(make_server: Callable[..., FerryServer]) -> FerryServer:
    return make_server("file")


# --- tests ---------------------------------------------------------------------------


class TestAuthentication:
    async def test_missing_and_wrong_tokens_are_refused_before_the_upgrade(self, srv: FerryServer) -> None:
        good = await new_user(srv, "alice")
        for token in (None, "", "fy_not-a-real-token", good + "x"):
            with pytest.raises(InvalidStatus) as refused:
                await open_ws(srv, token)
            assert refused.value.response.status_code == 401, token
        async with await session(srv, good) as ws:  # the right token still gets in
            assert isinstance(await call(ws, m.Ping(nid())), m.Pong)

    async def test_revoked_device_is_refused_and_its_open_session_closed(self, srv: FerryServer) -> None:
        await add_user(srv, "alice")
        laptop = await login(srv, "alice", device="laptop")
        phone = await login(srv, "alice", device="phone")
        async with await session(srv, laptop["token"]) as ws, await session(srv, phone["token"]) as other:
            assert ws.welcome.device_id == laptop["device_id"]  # type: ignore[attr-defined]

            r = await asyncio.to_thread(srv.admin, "device", "revoke", str(laptop["device_id"]))
            assert r.returncode == 0, r.stderr

            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)  # pushed out, not left to idle
            assert ws.close_code == 4001
            with pytest.raises(InvalidStatus) as refused:
                await open_ws(srv, laptop["token"])
            assert refused.value.response.status_code == 401
            # only that device: the user's other device carries on
            assert isinstance(await call(other, m.Ping(nid())), m.Pong)


class TestHandshake:
    async def test_failed_handshakes_get_an_error_then_close(self, srv: FerryServer) -> None:
        token = await new_user(srv, "alice")
        async with open_ws(srv, token) as ws:
            await ws.send(framing.encode(m.Hello(versions=[99])))
            reply = err(await recv(ws), ErrorCode.UNSUPPORTED_VERSION)
            assert reply.id is None
            assert "99" in reply.message and "speaks 1" in reply.message
            assert reply.detail == {"supported": [1]}
            closed = await expect_closed(ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1002

        async with open_ws(srv, token) as ws:  # anything before hello
            await ws.send(framing.encode(m.Ping(nid())))
            reply = err(await recv(ws), ErrorCode.PROTOCOL)
            assert "hello" in reply.message
            closed = await expect_closed(ws)
            assert closed.rcvd is not None and closed.rcvd.code == 1002

        async with open_ws(srv, token) as ws:  # a binary frame first
            await ws.send(framing.encode_block(framing.KIND_PUT, 1, sha(b"x"), b"x"))
            err(await recv(ws), ErrorCode.PROTOCOL)
            await expect_closed(ws)

        async with await session(srv, token) as ws:  # a second hello, once in session
            err(await exchange(ws, framing.encode(m.Hello(versions=[1])), None), ErrorCode.PROTOCOL)
            assert isinstance(await call(ws, m.Ping(nid())), m.Pong)  # is refused, and that is all


class TestBadFrames:
    async def test_bad_frames_get_errors_and_the_session_survives(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:
            reply = err(await exchange(ws, '{"type": "ping", "id": 1', None), ErrorCode.BAD_REQUEST)
            assert "JSON" in reply.message
            err(await exchange(ws, "[1, 2, 3]", None), ErrorCode.BAD_REQUEST)
            ping = nid()
            assert await call(ws, m.Ping(ping)) == m.Pong(ping)

            req = nid()
            reply = err(
                await exchange(ws, f'{{"type": "teleport", "id": {req}}}', req), ErrorCode.UNKNOWN_TYPE
            )
            assert "teleport" in reply.message

            req = nid()  # a reply type is not a request
            err(await exchange(ws, f'{{"type": "pong", "id": {req}}}', req), ErrorCode.UNKNOWN_TYPE)

            req = nid()
            reply = err(
                await exchange(ws, f'{{"type": "stat", "id": {req}, "path": 7}}', req), ErrorCode.BAD_REQUEST
            )
            assert "path" in reply.message
            req = nid()
            reply = err(await exchange(ws, f'{{"type": "stat", "id": {req}}}', req), ErrorCode.BAD_REQUEST)
            assert "path" in reply.message and "missing" in reply.message
            req = nid()  # a hash that is not 64 hex digits
            frame = f'{{"type": "get_block", "id": {req}, "hash": "{"zz" * 32}"}}'
            err(await exchange(ws, frame, req), ErrorCode.BAD_REQUEST)

            # a binary frame too short for its header
            err(await exchange(ws, b"\x01\x00\x00\x00", None), ErrorCode.BAD_REQUEST)
            req = nid()  # a DATA frame is the server's to send
            frame = framing.encode_block(framing.KIND_DATA, req, sha(b"x"), b"x")
            err(await exchange(ws, frame, req), ErrorCode.BAD_REQUEST)

            ping = nid()
            assert await call(ws, m.Ping(ping)) == m.Pong(ping)
            assert await all_changes(ws) == []  # none of it changed anything

    async def test_frame_over_max_frame_closes_with_1009(self, srv: FerryServer) -> None:
        token = await new_user(srv, "alice")
        ws = await session(srv, token, create_connection=_SeesCloseFrame)
        max_frame = ws.welcome.max_frame  # type: ignore[attr-defined]
        assert max_frame >= ws.welcome.max_block + framing.HEADER_SIZE  # type: ignore[attr-defined]
        sending = asyncio.create_task(
            ws.send(framing.encode_block(framing.KIND_PUT, nid(), sha(b""), bytes(max_frame)))
        )
        await asyncio.wait_for(ws.close_frame.wait(), TIMEOUT)  # type: ignore[attr-defined]
        # The server stopped reading mid-frame, so the rest of ours can never drain:
        # drop the TCP connection rather than wait for the server's close timeout.
        drop(ws.transport)
        await asyncio.gather(sending, return_exceptions=True)
        closed = await expect_closed(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1009
        async with await session(srv, token) as again:  # the server is fine
            assert isinstance(await call(again, m.Ping(nid())), m.Pong)

    async def test_many_requests_in_flight(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:
            # more than may be in flight, so back-pressure is exercised
            pings = [nid() for _ in range(ws.welcome.max_in_flight + 100)]  # type: ignore[attr-defined]
            bad = nid()
            for i, p in enumerate(pings):  # send everything before reading anything
                await ws.send(framing.encode(m.Ping(p)))
                if i == 30:
                    await ws.send(f'{{"type": "stat", "id": {bad}, "path": null}}')
                if i == len(pings) - 40:
                    await ws.send('{"type": "ping", "id": ')  # not even JSON: an error without an id
            replies: dict[int, Any] = {}
            while len(replies) < len(pings) + 2:
                reply = await recv(ws)
                assert reply.id not in replies, f"two replies for {reply.id}"  # type: ignore[union-attr]
                replies[reply.id] = reply  # type: ignore[union-attr]
            assert all(replies[p] == m.Pong(p) for p in pings)
            err(replies[bad], ErrorCode.BAD_REQUEST)
            err(replies[None], ErrorCode.BAD_REQUEST)


class TestBlocks:
    async def test_put_get_and_bad_block(self, server: FerryServer) -> None:
        async with await session(server, await new_user(server, "alice")) as ws:
            data = os.urandom(200_000)
            h = sha(data)
            assert (await call(ws, m.QueryBlocks(nid(), [h]))).missing == [h]
            assert isinstance(await put_block(ws, data), m.Ok)
            assert (await call(ws, m.QueryBlocks(nid(), [h]))).missing == []

            req = nid()
            got = await call(ws, m.GetBlock(req, h))
            assert isinstance(got, framing.BlockFrame)
            assert (got.kind, got.id, got.hash) == (framing.KIND_DATA, req, h)
            assert bytes(got.data) == data

            # bytes that do not hash to the name they are sent under
            liar = sha(b"something else entirely")
            err(await put_block(ws, data, liar), ErrorCode.BAD_BLOCK)
            assert (await call(ws, m.QueryBlocks(nid(), [liar, h]))).missing == [liar]
            err(await call(ws, m.GetBlock(nid(), liar)), ErrorCode.NOT_FOUND)
            # ... also under the name of a block already stored: no overwrite
            err(await put_block(ws, b"tampered", h), ErrorCode.BAD_BLOCK)
            assert bytes((await call(ws, m.GetBlock(nid(), h))).data) == data

            # and a commit cannot use the hash whose upload failed
            reply = err(await call(ws, commit_msg("/f", [liar], 24)), ErrorCode.MISSING_BLOCKS)
            assert reply.detail == {"missing": [liar.hex()]}


class TestCommit:
    async def test_commit_with_blocks_never_uploaded(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:
            have = b"uploaded block"
            assert isinstance(await put_block(ws, have), m.Ok)
            ghosts = [sha(b"ghost one"), sha(b"ghost two")]
            msg = commit_msg("/dir/f.txt", [ghosts[0], sha(have), ghosts[1]], len(have) + 18)
            reply = err(await call(ws, msg), ErrorCode.MISSING_BLOCKS)
            assert reply.detail == {"missing": [g.hex() for g in ghosts]}
            err(await stat(ws, "/dir/f.txt"), ErrorCode.NOT_FOUND)
            err(await stat(ws, "/dir"), ErrorCode.NOT_FOUND)  # no parent folder left behind
            assert await all_changes(ws) == []

    async def test_blocks_of_other_users_are_not_disclosed(self, srv: FerryServer) -> None:
        """Knowing a hash is not proof of having the content ("dropship")."""
        tokens = await asyncio.gather(new_user(srv, "alice"), new_user(srv, "bob"))
        async with await session(srv, tokens[0]) as alice, await session(srv, tokens[1]) as bob:
            secret = os.urandom(5000)
            h, nobody = sha(secret), sha(b"a block nobody has")
            await upload_and_commit(alice, "/secret.bin", secret)

            assert (await call(bob, m.QueryBlocks(nid(), [h, nobody]))).missing == [h, nobody]
            theirs = err(await call(bob, m.GetBlock(nid(), h)), ErrorCode.NOT_FOUND)
            absent = err(await call(bob, m.GetBlock(nid(), nobody)), ErrorCode.NOT_FOUND)
            assert theirs.message.replace(h.hex(), "H") == absent.message.replace(nobody.hex(), "H")
            reply = err(
                await call(bob, commit_msg("/stolen.bin", [h], len(secret))), ErrorCode.MISSING_BLOCKS
            )
            assert reply.detail == {"missing": [h.hex()]}
            err(await stat(bob, "/stolen.bin"), ErrorCode.NOT_FOUND)

            # sending the bytes proves bob has them; then the block is his to use
            assert isinstance(await put_block(bob, secret), m.Ok)
            assert (await call(bob, m.QueryBlocks(nid(), [h]))).missing == []
            assert isinstance(await call(bob, commit_msg("/mine.bin", [h], len(secret))), m.Committed)

    async def test_stale_parent_is_a_conflict(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:
            v1 = (await upload_and_commit(ws, "/doc.txt", b"version one")).entry
            v2 = (await upload_and_commit(ws, "/doc.txt", b"version two!", parent=v1.version)).entry
            assert v2.file_id == v1.file_id and v2.version != v1.version

            lost = b"lost update"
            assert isinstance(await put_block(ws, lost), m.Ok)
            for parent in (v1.version, None):
                reply = err(
                    await call(ws, commit_msg("/doc.txt", [sha(lost)], len(lost), parent)), ErrorCode.CONFLICT
                )
                assert reply.detail is not None
                assert reply.detail["current"]["version"] == v2.version
                assert reply.detail["current"]["content_hash"] == v2.content_hash.hex()  # type: ignore[union-attr]

            now = (await stat(ws, "/doc.txt")).entry
            assert (now.version, now.size, now.content_hash) == (v2.version, v2.size, v2.content_hash)
            assert [e.version for e in await all_changes(ws)] == [v1.version, v2.version]

    async def test_folder_delete_refused_when_something_newer_is_inside(self, srv: FerryServer) -> None:
        """A device deletes a folder as it last saw it: a file put in it meanwhile by
        another device (a newer version than any it saw) makes that a conflict, not a
        silent delete of a file it never saw (found by the simulation: tests/sim)."""
        async with await session(srv, await new_user(srv, "alice")) as ws:
            folder = (await call(ws, m.Mkdir(id=nid(), key=key(), path="/d"))).entry
            seen = (await upload_and_commit(ws, "/d/seen.txt", b"seen")).entry
            await upload_and_commit(ws, "/d/new.txt", b"put here meanwhile")
            reply = await call(
                ws, m.Delete(id=nid(), key=key(), path="/d", parent=folder.version, newest=seen.version)
            )
            err(reply, ErrorCode.CONFLICT)
            assert (await stat(ws, "/d/new.txt")).entry.kind == "file"

            newest = (await stat(ws, "/d/new.txt")).entry.version
            done = await call(
                ws, m.Delete(id=nid(), key=key(), path="/d", parent=folder.version, newest=newest)
            )
            assert isinstance(done, m.Committed), done
            err(await stat(ws, "/d/new.txt"), ErrorCode.NOT_FOUND)

    async def test_batch_commit_fails_per_file_and_applies_once(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:
            v1 = (await upload_and_commit(ws, "/taken.txt", b"already here")).entry
            blobs = [b"first", b"second", b"third"]
            for blob in blobs:
                assert isinstance(await put_block(ws, blob), m.Ok)
            files = [
                m.FileCommit("/batch/a.txt", None, 5, 1, [sha(blobs[0])]),
                m.FileCommit("/taken.txt", None, 6, 1, [sha(blobs[1])]),  # stale: exists already
                m.FileCommit("/batch/c.txt", None, 7, 1, [sha(blobs[2])]),  # wrong size
                m.FileCommit("/batch/d.txt", None, 6, 1, [sha(blobs[1])]),
            ]
            first = await call(ws, m.CommitBatch(900, "batch-key", files))
            assert isinstance(first, m.CommittedBatch)
            codes = [r.failure.code if r.failure else None for r in first.results]
            assert codes == [None, "conflict", "bad_entry", None]
            assert first.results[1].failure.detail["current"]["version"] == v1.version  # type: ignore[union-attr, index]
            again = await call(ws, m.CommitBatch(901, "batch-key", files))
            assert again.results == first.results and again.seq == first.seq
            paths = sorted(e.path for e in await all_changes(ws))
            assert paths == ["/batch", "/batch/a.txt", "/batch/d.txt", "/taken.txt"]
            assert (await stat(ws, "/taken.txt")).entry.version == v1.version
            err(await call(ws, m.Stat(902, "/batch/c.txt")), ErrorCode.NOT_FOUND)

    async def test_batch_commit_follows_the_rules_of_single_commits(self, srv: FerryServer) -> None:
        """A batch is checked as if its files were committed one by one, in order:
        folders made on the way, a file under a file or at a folder refused, an
        unchanged file keeps its version, an edit needs the current parent; the
        journal, heads and versions agree afterwards."""
        async with await session(srv, await new_user(srv, "alice")) as ws:
            old = (await upload_and_commit(ws, "/keep/old.txt", b"old")).entry
            same = (await upload_and_commit(ws, "/keep/same.txt", b"same")).entry
            assert isinstance(await call(ws, m.Mkdir(nid(), key(), "/adir")), m.Committed)
            blobs = [b"new one", b"edited!", b"x"]
            for blob in blobs:
                assert isinstance(await put_block(ws, blob), m.Ok)
            never_sent = sha(b"never sent")
            files = [
                m.FileCommit("/deep/er/new.txt", None, 7, 5, [sha(blobs[0])]),  # makes /deep, /deep/er
                m.FileCommit("/deep/er/also.txt", None, 1, 5, [sha(blobs[2])]),  # folders exist by now
                m.FileCommit("/keep/old.txt", old.version, 7, 6, [sha(blobs[1])]),  # an edit
                m.FileCommit(
                    "/keep/same.txt",
                    same.version,
                    same.size,
                    same.mtime_ns,
                    [b.hash for b in same.blocks or []],
                ),
                m.FileCommit("/adir", None, 1, 5, [sha(blobs[2])]),  # a folder is there
                m.FileCommit(
                    "/deep/er/new.txt/under", None, 1, 5, [sha(blobs[2])]
                ),  # under a file of this batch
                m.FileCommit("/flat", None, 1, 5, [sha(blobs[2])]),
                m.FileCommit("/flat/inside", None, 1, 5, [sha(blobs[2])]),  # under that file
                m.FileCommit("/gap/missing.bin", None, 10, 5, [never_sent]),  # makes no folder either
                m.FileCommit("/", None, 1, 5, [sha(blobs[2])]),
            ]
            reply = await call(ws, m.CommitBatch(nid(), key(), files))
            assert isinstance(reply, m.CommittedBatch), reply
            codes = [r.failure.code if r.failure else None for r in reply.results]
            assert codes == [None, None, None, None, "is_a_directory", "not_a_directory", None,
                             "not_a_directory", "missing_blocks", "bad_path"]  # fmt: skip
            got = [r.entry for r in reply.results]
            assert got[3] == same  # unchanged: the same version, no new one
            assert got[2] is not None and got[2].file_id == old.file_id and got[2].version > old.version
            assert got[0] is not None and got[1] is not None and got[0].version < got[1].version
            changes = await all_changes(ws)
            live = {e.path: e for e in changes if not e.deleted}
            assert sorted(live) == ["/adir", "/deep", "/deep/er", "/deep/er/also.txt", "/deep/er/new.txt",
                                    "/flat", "/keep", "/keep/old.txt", "/keep/same.txt"]  # fmt: skip
            for entry in (got[0], got[1], got[2], got[6]):
                assert entry is not None and live[entry.path] == entry  # what the reply said is what stands
            assert live["/deep"].kind == live["/deep/er"].kind == "dir"
            for path in live:
                assert (await stat(ws, path)).entry == live[path]

            # the same path twice in one batch: the second is checked against the first
            twice = [m.FileCommit("/twice.txt", None, 1, 5, [sha(blobs[2])]),
                     m.FileCommit("/twice.txt", None, 7, 5, [sha(blobs[0])])]  # fmt: skip
            reply = await call(ws, m.CommitBatch(nid(), key(), twice))
            assert [r.failure.code if r.failure else None for r in reply.results] == [None, "conflict"]
            assert (await stat(ws, "/twice.txt")).entry.size == 1

    async def test_same_key_commits_once(self, srv: FerryServer) -> None:
        token = await new_user(srv, "alice")
        async with await session(srv, token) as ws:
            data = b"idempotent"
            assert isinstance(await put_block(ws, data), m.Ok)
            msg = commit_msg("/once.txt", [sha(data)], len(data))
            first = await call(ws, msg)
            again = await call(ws, msg)
            assert isinstance(first, m.Committed) and again == first
        async with await session(srv, token) as ws:  # a retry after a dropped connection
            retry = await call(ws, _with_id(msg))
            assert isinstance(retry, m.Committed)
            assert (retry.seq, retry.entry) == (first.seq, first.entry)

            # the same request several times in flight at once (a client retrying
            # on a slow reply): one wins, the others return its result
            raced = b"raced"
            assert isinstance(await put_block(ws, raced), m.Ok)
            copies = [
                _with_id(commit_msg("/race.txt", [sha(raced)], len(raced), key="race-key")) for _ in range(5)
            ]
            for c in copies:
                await ws.send(framing.encode(c))
            replies: dict[int, Any] = {}
            while len(replies) < len(copies):
                reply = await recv(ws)
                if not isinstance(reply, m.Changed):
                    replies[reply.id] = reply  # type: ignore[union-attr]
            results = [(r.seq, r.entry) if isinstance(r, m.Committed) else r for r in replies.values()]
            assert all(r == results[0] for r in results), results
            race_seq, race_entry = results[0]
            assert race_seq == first.seq + 1

            changes = await all_changes(ws)
            assert [(e.path, e.version) for e in changes] == [
                ("/once.txt", first.entry.version),
                ("/race.txt", race_entry.version),
            ]

    async def test_impossible_entry(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:
            a, b = b"first block", b"second"
            for data in (a, b):
                assert isinstance(await put_block(ws, data), m.Ok)
            for size in (len(a) + len(b) + 1, len(a), 0, -1):
                err(await call(ws, commit_msg("/bad.txt", [sha(a), sha(b)], size)), ErrorCode.BAD_ENTRY)
            err(await call(ws, commit_msg("/empty.txt", [], 1)), ErrorCode.BAD_ENTRY)
            err(await stat(ws, "/bad.txt"), ErrorCode.NOT_FOUND)
            err(await stat(ws, "/empty.txt"), ErrorCode.NOT_FOUND)
            assert await all_changes(ws) == []
            ok = await call(ws, commit_msg("/good.txt", [sha(a), sha(b)], len(a) + len(b)))
            assert isinstance(ok, m.Committed) and ok.entry.size == len(a) + len(b)

    async def test_bad_paths(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:
            bad = ["/a/../b", "/a/./b", "/a\x00b", "/a\nb", "/a//b", "/a/", "relative", "", "/a\\b",
                   "/" + "n" * 256, "/" + "é" * 128]  # fmt: skip
            for path in bad:
                err(await stat(ws, path), ErrorCode.BAD_PATH)
                err(await call(ws, commit_msg(path, [], 0)), ErrorCode.BAD_PATH)
                err(await call(ws, m.Mkdir(id=nid(), key=key(), path=path)), ErrorCode.BAD_PATH)
                err(await call(ws, m.Delete(id=nid(), key=key(), path=path)), ErrorCode.BAD_PATH)
                err(await call(ws, m.Move(id=nid(), key=key(), src="/x", dst=path)), ErrorCode.BAD_PATH)
                err(await call(ws, m.ListFolder(id=nid(), path=path)), ErrorCode.BAD_PATH)
            assert (await call(ws, m.ListFolder(id=nid(), path="/"))).entries == []
            assert await all_changes(ws) == []
            # the longest allowed name is fine
            assert isinstance(await call(ws, m.Mkdir(id=nid(), key=key(), path="/" + "n" * 255)), m.Committed)


class TestTree:
    async def test_mkdir_move_delete_and_changes(self, srv: FerryServer) -> None:
        async with await session(srv, await new_user(srv, "alice")) as ws:

            async def change(msg: m.Message) -> m.Committed:
                reply = await call(ws, msg)
                assert isinstance(reply, m.Committed), reply
                return reply

            made = await change(m.Mkdir(id=nid(), key=key(), path="/a/b/c"))
            assert made.seq == 3  # /a, /a/b and /a/b/c
            for path in ("/a", "/a/b", "/a/b/c"):
                assert (await stat(ws, path)).entry.kind == "dir"
            assert [e.path for e in (await call(ws, m.ListFolder(id=nid(), path="/a/b"))).entries] == [
                "/a/b/c"
            ]
            f = await upload_and_commit(ws, "/a/b/file.txt", b"inside")

            moved = await change(m.Move(id=nid(), key=key(), src="/a", dst="/z"))
            assert moved.entry.path == "/z"
            listing = await call(ws, m.ListFolder(id=nid(), path="/z/b"))
            assert [e.path for e in listing.entries] == ["/z/b/c", "/z/b/file.txt"]
            moved_file = (await stat(ws, "/z/b/file.txt")).entry
            assert (moved_file.file_id, moved_file.content_hash) == (f.entry.file_id, f.entry.content_hash)
            for gone in ("/a", "/a/b", "/a/b/c", "/a/b/file.txt"):
                err(await stat(ws, gone), ErrorCode.NOT_FOUND)
            assert [e.path for e in (await call(ws, m.ListFolder(id=nid(), path="/"))).entries] == ["/z"]

            for dst in ("/z/inside", "/z/b/c/deeper"):
                err(await call(ws, m.Move(id=nid(), key=key(), src="/z", dst=dst)), ErrorCode.BAD_PATH)
            assert (await stat(ws, "/z")).entry.version == moved.entry.version

            await change(m.Delete(id=nid(), key=key(), path="/z"))
            for gone in ("/z", "/z/b", "/z/b/c", "/z/b/file.txt"):
                err(await stat(ws, gone), ErrorCode.NOT_FOUND)
            assert (await call(ws, m.ListFolder(id=nid(), path="/"))).entries == []

            # the journal, in pages of two
            head = (await call(ws, m.ListChanges(id=nid(), since=0, limit=5000))).cursor
            # one journal row per changed path: 3 mkdir + 1 commit + 4 moved + 4 deleted
            assert head == 12
            seen: list[m.Entry] = []
            cursor, pages = 0, 0
            while True:
                page = await call(ws, m.ListChanges(id=nid(), since=cursor, limit=2))
                assert isinstance(page, m.Changes)
                assert len(page.entries) == min(2, head - cursor)
                assert page.cursor == cursor + len(page.entries)
                assert page.has_more == (page.cursor < head)
                seen += page.entries
                cursor, pages = page.cursor, pages + 1
                if not page.has_more:
                    break
            assert cursor == head and pages == (head + 1) // 2
            assert seen == await all_changes(ws)
            assert [e.path for e in seen[:3]] == ["/a", "/a/b", "/a/b/c"]
            assert seen[-1].path == "/z" and seen[-1].deleted
            end = await call(ws, m.ListChanges(id=nid(), since=head))
            assert (end.entries, end.cursor, end.has_more) == ([], head, False)
            for beyond in (head + 1, -1):
                err(await call(ws, m.ListChanges(id=nid(), since=beyond)), ErrorCode.BAD_REQUEST)


class TestPush:
    async def test_commit_pushes_changed_to_the_other_session(self, srv: FerryServer) -> None:
        await add_user(srv, "alice")
        tokens = [(await login(srv, "alice", device=d))["token"] for d in ("one", "two")]
        async with await session(srv, tokens[0]) as one, await session(srv, tokens[1]) as two:
            (root,) = two.welcome.namespaces  # type: ignore[attr-defined]
            assert root.head_seq == 0

            done = await upload_and_commit(one, "/pushed.txt", b"news")
            push = await recv(two)  # two sent nothing: the only thing it can get is a push
            assert push == m.Changed(ns=root.ns, seq=done.seq)

            made = await call(one, m.Mkdir(id=nid(), key=key(), path="/more"))
            push = await recv(two)
            assert push == m.Changed(ns=root.ns, seq=made.seq)
