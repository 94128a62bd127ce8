"""Helpers for the HTTP API and mobile SDK tests: one `ferry server` per test
module (each test makes its own users, so tests stay independent), and a
plain-httpx uploader that speaks the API by hand."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from protocol.chunking import chunk_bytes
from server.metastore import MetaStore
from tests.support.servers import FerryServer, create_database, drop_database

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def api_server(pg_admin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FerryServer]:
    url = create_database(pg_admin)
    server = FerryServer(tmp_path_factory.mktemp("api-server"), url).start()
    yield server
    server.stop()
    drop_database(pg_admin, url)


async def add_user(server: FerryServer, name: str | None = None, password: str = "pw") -> str:
    """A new user, made in the server's database by the code `ferry admin user add`
    runs (in-process: a CLI process per user would be most of these tests' time)."""
    name = name or "u" + uuid.uuid4().hex[:10]
    assert server.database_url is not None
    pool = await asyncpg.create_pool(server.database_url, min_size=1, max_size=1)
    try:
        await MetaStore(pool).add_user(name, password)
    finally:
        await pool.close()
    return name


async def token_for(server: FerryServer, name: str, device: str = "phone", password: str = "pw") -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT) as http:
        r = await http.post(
            f"{server.url}/api/v1/login", json={"user": name, "password": password, "device": device}
        )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def api(server: FerryServer, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=server.url + "/api/v1", headers=headers, trust_env=False, timeout=TIMEOUT
    )


async def upload(
    http: httpx.AsyncClient, path: str, data: bytes, parent: int | None = None
) -> dict[str, Any]:
    """missing → PUT → commit, as any third-party client would; the commit reply."""
    blocks = chunk_bytes(data)
    hashes = [b.hash.hex() for b in blocks]
    r = await http.post("/blocks/missing", json={"hashes": hashes})
    assert r.status_code == 200, r.text
    for b in blocks:
        if b.hash.hex() in r.json()["missing"]:
            put = await http.put(f"/blocks/{b.hash.hex()}", content=bytes(b.data))
            assert put.status_code == 200, put.text
    body = {"path": path, "parent": parent, "size": len(data), "mtime_ns": 1, "blocks": hashes}
    r = await http.post("/commit", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 200, r.text
    return dict(r.json())
