"""Database errors met while PostgreSQL shuts down, restarts or is full reach
clients as ``unavailable`` (retry later), not ``internal`` (a live client once
stopped on one: tests/faults/test_postgres_faults.py)."""

from __future__ import annotations

import asyncpg
import pytest

from protocol.errors import ErrorCode, ProtocolError
from server.services import translate_errors


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.AdminShutdownError("terminating connection due to immediate shutdown command"),
        asyncpg.exceptions.CrashShutdownError(
            "terminating connection because of crash of another server process"
        ),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
def test_database_going_away_is_unavailable(exc: Exception) -> None:
    with pytest.raises(ProtocolError) as caught, translate_errors():
        raise exc
    assert caught.value.code == ErrorCode.UNAVAILABLE


def test_other_database_errors_stay_internal() -> None:
    with pytest.raises(ProtocolError) as caught, translate_errors():
        raise asyncpg.exceptions.UndefinedTableError('relation "nope" does not exist')
    assert caught.value.code == ErrorCode.INTERNAL
