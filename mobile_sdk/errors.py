"""The SDK's errors: offline, not logged in, and what the server answered."""

from __future__ import annotations

from typing import Any

import httpx


class FerryError(Exception):
    """Base of every error the SDK raises; the message says what to do."""


class OfflineError(FerryError):
    """The server cannot be reached (or stopped answering) and the call needs
    it: nothing cached could answer instead. Retry when the network is back."""


class NotLoggedIn(FerryError):
    """No device token in this home: call ``login`` first."""


class ApiError(FerryError):
    """The server answered with an error: ``status`` (HTTP), ``code`` (e.g.
    ``not_found``, ``conflict``, ``bad_range``), ``message``, ``detail``."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message, self.detail = status, code, message, detail

    @classmethod
    def from_response(cls, r: httpx.Response) -> ApiError:
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("code"), str):
            return cls(r.status_code, body["code"], str(body.get("message", "")), body.get("detail"))
        return cls(r.status_code, "http_error", r.text.strip()[:200] or r.reason_phrase)


class CorruptBlock(FerryError):
    """A block's bytes did not match its SHA-256 (from the server or the cache)."""
