"""Error codes shared by every side, and the exception that carries one."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"  # malformed JSON, wrong types, missing fields
    UNKNOWN_TYPE = "unknown_type"  # message type this side does not know
    UNSUPPORTED_VERSION = "unsupported_version"
    PROTOCOL = "protocol"  # message out of order (e.g. before hello)
    UNAUTHORIZED = "unauthorized"  # wrong password, missing/revoked token
    FORBIDDEN = "forbidden"
    BAD_PATH = "bad_path"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # stale parent version; detail carries the current entry
    EXISTS = "exists"
    NOT_A_DIRECTORY = "not_a_directory"
    IS_A_DIRECTORY = "is_a_directory"
    BAD_BLOCK = "bad_block"  # bytes do not match the named hash, or block too big
    MISSING_BLOCKS = "missing_blocks"  # commit names blocks the server lacks; detail lists them
    BAD_ENTRY = "bad_entry"  # impossible entry (size != sum of blocks, ...)
    TOO_LARGE = "too_large"
    QUOTA_EXCEEDED = "quota_exceeded"  # the change would take the owner over their storage quota
    READ_ONLY = "read_only"  # a viewer of a shared folder tried to change it
    BUSY = "busy"  # too many requests in flight
    UNAVAILABLE = "unavailable"  # a store (database, S3) is unreachable; retry later
    INTERNAL = "internal"


class ProtocolError(Exception):
    """An error with a code and a message a person can act on."""

    def __init__(self, code: ErrorCode, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail

    @classmethod
    def received(
        cls,
        code: str,
        message: str,
        detail: dict[str, Any] | None = None,
        unknown: ErrorCode = ErrorCode.INTERNAL,
    ) -> ProtocolError:
        """The error a peer sent (an ``error`` message); a code we do not know becomes ``unknown``."""
        return cls(ErrorCode(code) if code in ErrorCode._value2member_map_ else unknown, message, detail)

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r})"
