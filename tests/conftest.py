"""Shared fixtures: real PostgreSQL, a real S3-compatible server (moto in
server mode, a subprocess), and `ferry server` processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.moto_server import ensure_test_aws_env, moto_server
from tests.support.servers import Device, FerryServer, admin_url, create_database, drop_database

ensure_test_aws_env()


@pytest.fixture(scope="session")
def pg_admin(tmp_path_factory: pytest.TempPathFactory) -> str:
    return admin_url(tmp_path_factory.mktemp("embedded-pg"))


@pytest.fixture
def database_url(pg_admin: str) -> Iterator[str]:
    url = create_database(pg_admin)
    yield url
    drop_database(pg_admin, url)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_server(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FerryServer]]:
    started: list[FerryServer] = []

    def make(backend: str = "file", **kw: object) -> FerryServer:
        blocks, endpoint = None, None
        if backend == "s3":
            blocks = f"s3://ferry-{len(started)}-{tmp_path.name[-20:].lower().replace('_', '-')}"
            endpoint = request.getfixturevalue("s3_endpoint")
        server = FerryServer(tmp_path / f"server{len(started)}", database_url, blocks, endpoint, **kw)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def server(make_server: Callable[..., FerryServer], backend: str) -> FerryServer:
    return make_server(backend)


@pytest.fixture
def alice(server: FerryServer, tmp_path: Path) -> Device:
    r = server.admin("user", "add", "alice", "--password-stdin", stdin="alice-pw\n")
    assert r.returncode == 0, r.stderr
    return Device(tmp_path / "alice-home", server).login("alice", "alice-pw")
