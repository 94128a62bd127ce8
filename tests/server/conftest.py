"""Fixtures for server tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.moto_server import moto_server


@pytest.fixture(scope="session")
def moto_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a moto S3 server subprocess shared by the session (use a fresh bucket per test).

    Reuses the top-level ``s3_endpoint`` fixture's server when there is one, so a
    session runs a single moto process. Sets fake AWS credentials and region in
    os.environ where unset.
    """
    try:
        shared: str | None = request.getfixturevalue("s3_endpoint")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield shared
        return
    with moto_server() as url:
        yield url
