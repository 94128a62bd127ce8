"""The HTTP API, by hand (plain httpx, no SDK), against a real `ferry server`
on real PostgreSQL: what any third-party client would see."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import random
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from PIL import Image

from protocol.chunking import chunk_bytes
from server.app import create_app
from server.config import Settings
from tests.e2e.api_support import add_user, api, api_server, token_for, upload
from tests.support.servers import FerryServer

__all__ = ["api_server"]  # the module-scoped server fixture


async def test_browse_list_stat_and_paged_changes(api_server: FerryServer) -> None:
    token = await token_for(api_server, await add_user(api_server))
    async with api(api_server, token) as http:
        for i in range(3):
            await upload(http, f"/photos/{i}.jpg", b"photo %d" % i)
        listing = (await http.get("/list", params={"path": "/photos"})).json()
        assert [e["path"] for e in listing["entries"]] == ["/photos/0.jpg", "/photos/1.jpg", "/photos/2.jpg"]
        page = (await http.get("/list", params={"path": "/photos", "limit": 2})).json()
        assert len(page["entries"]) == 2 and page["next"] == "/photos/1.jpg"
        entry = (await http.get("/stat", params={"path": "/photos/1.jpg"})).json()
        assert entry["size"] == 7 and entry["blocks"][0] == [hashlib.sha256(b"photo 1").hexdigest(), 7]

        first = (await http.get("/changes", params={"limit": 2})).json()
        assert first["has_more"] and [e["path"] for e in first["entries"]] == ["/photos", "/photos/0.jpg"]
        rest = (await http.get("/changes", params={"cursor": first["cursor"]})).json()
        assert not rest["has_more"] and [e["path"] for e in rest["entries"]] == [
            "/photos/1.jpg",
            "/photos/2.jpg",
        ]
        assert (await http.get("/cursor")).json()["cursor"] == rest["cursor"]
        assert (await http.get("/list", params={"path": "/nope"})).status_code == 404


async def test_download_honours_ranges_and_refuses_outside_ones(api_server: FerryServer) -> None:
    token = await token_for(api_server, await add_user(api_server))
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
    async with api(api_server, token) as http:
        committed = await upload(http, "/v.bin", data)
        whole = await http.get("/download", params={"path": "/v.bin"})
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["etag"] == f'"{committed["entry"]["content_hash"]}"'
        for spec, want in [("bytes=0-99", data[:100]), ("bytes=1048570-1048600", data[1048570:1048601]),
                           ("bytes=-1024", data[-1024:]), ("bytes=3145700-", data[3145700:])]:  # fmt: skip
            r = await http.get("/download", params={"path": "/v.bin"}, headers={"Range": spec})
            assert r.status_code == 206 and r.content == want, spec
            assert r.headers["content-range"].endswith(f"/{len(data)}")
        bad = await http.get("/download", params={"path": "/v.bin"}, headers={"Range": f"bytes={len(data)}-"})
        assert bad.status_code == 416 and bad.json()["code"] == "bad_range"
        assert bad.headers["content-range"] == f"bytes */{len(data)}"
        assert (await http.get("/download", params={"path": "/v.bin", "version": 10**9})).status_code == 404
        head = await http.head("/download", params={"path": "/v.bin"}, headers={"Range": "bytes=10-19"})
        assert head.status_code == 206 and head.headers["content-length"] == "10" and head.content == b""


async def test_blocks_by_hash_only_for_readers(api_server: FerryServer) -> None:
    alice = await token_for(api_server, await add_user(api_server))
    bob = await token_for(api_server, await add_user(api_server))
    secret = b"alice's secret block"
    h = hashlib.sha256(secret).hexdigest()
    async with api(api_server, alice) as a, api(api_server, bob) as b:
        await upload(a, "/secret.txt", secret)
        r = await a.get(f"/blocks/{h}")
        assert (
            r.content == secret
            and "immutable" in r.headers["cache-control"]
            and r.headers["etag"] == f'"{h}"'
        )
        assert (await a.get(f"/blocks/{h}", headers={"If-None-Match": f'"{h}"'})).status_code == 304
        # bob learns nothing: the same 404 as for a hash nobody has, and he must send the bytes
        theirs, nobody = await b.get(f"/blocks/{h}"), await b.get(f"/blocks/{'0' * 64}")
        assert theirs.status_code == nobody.status_code == 404 and theirs.json()["code"] == "not_found"
        assert (await b.get(f"/blocks/{h}", headers={"If-None-Match": f'"{h}"'})).status_code == 404
        assert (await b.post("/blocks/missing", json={"hashes": [h]})).json()["missing"] == [h]
        assert (await b.get("/list", params={"ns": 1})).status_code == 404
        assert (await b.get("/blocks/xyz")).status_code == 400


async def test_bad_tokens_cursors_and_bodies_get_clear_errors(api_server: FerryServer) -> None:
    name = await add_user(api_server)
    token = await token_for(api_server, name)
    async with api(api_server, None) as anon, api(api_server, "fy_not-a-token") as wrong:
        for client in (anon, wrong):
            r = await client.get("/list")
            assert (
                r.status_code == 401
                and r.json()["code"] == "unauthorized"
                and "Bearer" in r.headers["www-authenticate"]
            )
    async with api(api_server, token) as http:
        for bad in ("nonsense", "c1.1", "c1.x.2"):
            r = await http.get("/changes", params={"cursor": bad})
            assert r.status_code == 400 and "malformed cursor" in r.json()["message"]
        assert (await http.get("/changes/wait", params={"cursor": "c1.-1.0"})).status_code == 400
        big = b"x" * (4 * 1024 * 1024 + 1)
        r = await http.put(f"/blocks/{hashlib.sha256(big).hexdigest()}", content=big)
        assert r.status_code == 413 and r.json()["code"] == "too_large"

        async def endless() -> AsyncIterator[bytes]:  # chunked, no Content-Length: refused while streaming
            for _ in range(100):
                yield b"y" * (256 * 1024)

        r = await http.put(f"/blocks/{'ab' * 32}", content=endless())
        assert r.status_code == 413
        r = await http.put(f"/blocks/{hashlib.sha256(b'a').hexdigest()}", content=b"b")
        assert r.status_code == 400 and r.json()["code"] == "bad_block"
        r = await http.post("/commit", json={"path": "/a", "parent": None, "size": 1, "mtime_ns": 0,
                                             "blocks": [hashlib.sha256(b"a").hexdigest()]},
                            headers={"Idempotency-Key": "k1"})  # fmt: skip
        assert r.status_code == 409 and r.json()["code"] == "missing_blocks"
        assert r.json()["detail"]["missing"] == [hashlib.sha256(b"a").hexdigest()]
        assert (await http.get("/list", params={"path": "../etc"})).status_code == 400
    # a revoked device's token stops working at once
    devices = await asyncio.to_thread(api_server.admin, "device", "list", name)
    (device_id,) = [
        d["device_id"] for d in map(json.loads, devices.stdout.splitlines()) if d["name"] == "phone"
    ]
    assert (await asyncio.to_thread(api_server.admin, "device", "revoke", str(device_id))).returncode == 0
    async with api(api_server, token) as http:
        assert (await http.get("/list")).status_code == 401


async def test_commit_is_idempotent_and_resumable(api_server: FerryServer) -> None:
    token = await token_for(api_server, await add_user(api_server))
    data = random.Random(3).randbytes(2 * 1024 * 1024)
    blocks = chunk_bytes(data)
    hashes = [b.hash.hex() for b in blocks]
    assert len(blocks) >= 2
    async with api(api_server, token) as http:
        await http.put(f"/blocks/{hashes[0]}", content=bytes(blocks[0].data))  # then the "network drops"
        assert (await http.post("/blocks/missing", json={"hashes": hashes})).json()["missing"] == hashes[1:]
        for b in blocks[1:]:
            await http.put(f"/blocks/{b.hash.hex()}", content=bytes(b.data))
        body = {
            "path": "/r.bin",
            "parent": None,
            "size": len(data),
            "mtime_ns": 5,
            "blocks": hashes,
            "key": "same",
        }
        first, again = await http.post("/commit", json=body), await http.post("/commit", json=body)
        assert first.status_code == again.status_code == 200 and first.json() == again.json()
        history = (await http.get("/history", params={"path": "/r.bin"})).json()
        assert len(history["versions"]) == 1
        stale = await http.post("/commit", json={**body, "key": "other", "mtime_ns": 6})
        assert stale.status_code == 409 and stale.json()["code"] == "conflict"


async def test_history_and_restore(api_server: FerryServer) -> None:
    token = await token_for(api_server, await add_user(api_server))
    async with api(api_server, token) as http:
        v1 = (await upload(http, "/doc.txt", b"first"))["entry"]["version"]
        await upload(http, "/doc.txt", b"second", parent=v1)
        versions = (await http.get("/history", params={"path": "/doc.txt"})).json()["versions"]
        assert [v["entry"]["size"] for v in versions] == [6, 5] and versions[0]["current"]
        r = await http.post(
            "/restore", json={"path": "/doc.txt", "version": v1}, headers={"Idempotency-Key": "r1"}
        )
        assert r.status_code == 200, r.text
        assert (await http.get("/download", params={"path": "/doc.txt"})).content == b"first"
        assert (
            await http.post("/restore", json={"path": "/doc.txt", "version": 1})
        ).status_code == 400  # no key


async def test_mkdir_move_delete_and_undelete(api_server: FerryServer) -> None:
    token = await token_for(api_server, await add_user(api_server))
    async with api(api_server, token) as http:

        async def change(route: str, **body: object) -> httpx.Response:
            return await http.post(route, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})

        assert (await change("/mkdir", path="/a/b")).status_code == 200
        v = (await upload(http, "/a/b/f.txt", b"f"))["entry"]["version"]
        moved = await change("/move", src="/a", dst="/c")
        assert moved.status_code == 200 and moved.json()["entry"]["path"] == "/c"
        assert (await http.get("/download", params={"path": "/c/b/f.txt"})).content == b"f"
        assert (await change("/move", src="/c/b/f.txt", dst="/c")).json()["code"] == "exists"
        assert (await change("/delete", path="/c/b/f.txt", parent=v + 10**6)).json()["code"] == "conflict"
        assert (await change("/delete", path="/c")).status_code == 200
        assert (await http.get("/list", params={"path": "/"})).json()["entries"] == []
        assert (await change("/restore", path="/c")).status_code == 200  # undelete, contents and all
        assert (await http.get("/download", params={"path": "/c/b/f.txt"})).content == b"f"
        assert (await http.post("/mkdir", json={"path": "/x"})).status_code == 400  # no idempotency key


async def test_long_poll_wakes_within_200ms_of_another_devices_commit(api_server: FerryServer) -> None:
    name = await add_user(api_server)
    phone, laptop = await token_for(api_server, name, "phone"), await token_for(api_server, name, "laptop")
    async with api(api_server, phone) as p, api(api_server, laptop) as lap:
        cursor = (await p.get("/cursor")).json()["cursor"]
        quiet = await p.get("/changes/wait", params={"cursor": cursor, "timeout": 1})
        assert quiet.json() == {"changes": False}
        for _ in range(3):
            cursor = (await p.get("/cursor")).json()["cursor"]
            waiting = asyncio.create_task(p.get("/changes/wait", params={"cursor": cursor, "timeout": 30}))
            await asyncio.sleep(
                0.3
            )  # let the poll reach the server and park (else it answers at once, also right)
            assert not waiting.done()
            await upload(lap, f"/n-{uuid.uuid4().hex[:6]}", b"new")
            committed = time.monotonic()
            r = await waiting
            assert r.json() == {"changes": True}
            assert time.monotonic() - committed < 0.2
        stale = await p.get(
            "/changes/wait", params={"cursor": cursor, "timeout": 30}
        )  # already stale: at once
        assert stale.json() == {"changes": True}


def _png(width: int, height: int, rgba: bool = False) -> bytes:
    img = Image.new("RGBA" if rgba else "RGB", (width, height), (200, 30, 30, 128) if rgba else (30, 60, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming a huge image, with a tiny compressed body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def test_thumbnails_of_jpeg_and_png_cached_and_bombs_refused(api_server: FerryServer) -> None:
    token = await token_for(api_server, await add_user(api_server))
    jpeg = io.BytesIO()
    Image.new("RGB", (2000, 1000), (10, 200, 10)).save(jpeg, "JPEG")
    async with api(api_server, token) as http:
        await upload(http, "/a.jpg", jpeg.getvalue())
        await upload(http, "/b.png", _png(300, 600, rgba=True))
        for path, size, want in [("/a.jpg", 256, (256, 128)), ("/a.jpg", 64, (64, 32)), ("/b.png", 1024, (300, 600)),
                                 ("/b.png", 256, (128, 256))]:  # fmt: skip
            r = await http.get("/thumbnail", params={"path": path, "size": size})
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
            assert r.headers["x-ferry-cache"] == "miss"
            assert Image.open(io.BytesIO(r.content)).size == want
        again = await http.get("/thumbnail", params={"path": "/a.jpg", "size": 256})
        assert again.headers["x-ferry-cache"] == "hit"
        etag = {"If-None-Match": again.headers["etag"]}
        assert (
            await http.get("/thumbnail", params={"path": "/a.jpg", "size": 256}, headers=etag)
        ).status_code == 304
        assert (await http.get("/thumbnail", params={"path": "/a.jpg", "size": 300})).status_code == 400
        await upload(http, "/bomb.png", _bomb_png(100_000, 100_000))
        await upload(http, "/notimage.jpg", b"just text")
        bomb = await http.get("/thumbnail", params={"path": "/bomb.png"})
        assert bomb.status_code == 413 and bomb.json()["code"] == "image_too_large"
        assert (await http.get("/thumbnail", params={"path": "/notimage.jpg"})).status_code == 415
        assert (await http.get("/thumbnail", params={"path": "/b.png"})).status_code == 200  # still serving


async def test_openapi_document_matches_the_routes(api_server: FerryServer) -> None:
    async with api(api_server, None) as http:
        doc = (await http.get("/openapi.json")).json()
    app = create_app(Settings(), "postgresql://unused")
    served = {
        (route.path, method.lower())
        for route in app.routes
        if route.path.startswith("/api/v1/")  # type: ignore[attr-defined]
        for method in route.methods or ()  # type: ignore[attr-defined]
        if method != "HEAD"
    }
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served
    assert len(served) >= 15
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op.get("summary") and op.get("responses"), (path, method)
    wait = {p["name"] for p in doc["paths"]["/api/v1/changes/wait"]["get"]["parameters"]}
    assert wait == {"cursor", "timeout"}
    assert doc["paths"]["/api/v1/login"]["post"]["security"] == []


@pytest.mark.parametrize("spec", ["bytes=5-2", "items=0-1", "bytes=0-1,4-5"])
async def test_ranges_a_server_may_ignore_serve_the_whole_file(api_server: FerryServer, spec: str) -> None:
    token = await token_for(api_server, await add_user(api_server))
    async with api(api_server, token) as http:
        await upload(http, "/t.txt", b"0123456789")
        r = await http.get("/download", params={"path": "/t.txt"}, headers={"Range": spec})
        assert r.status_code == 200 and r.content == b"0123456789"
