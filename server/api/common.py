"""What every HTTP API route shares: authentication, errors, parameters, cursors.

A route handler takes ``(request, who, services)``; :func:`authed` turns it
into a Starlette endpoint that first authenticates the bearer token with the
very check the WebSocket upgrade makes (:meth:`Services.authenticate`) and
turns every :class:`ProtocolError` or :class:`HttpError` into the one error
shape, ``{"code": ..., "message": ...}`` (plus ``detail`` where a code has
one, e.g. the blocks a commit still needs).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from protocol import framing
from protocol.errors import ErrorCode, ProtocolError
from protocol.hashing import parse_hash
from protocol.paths import validate_path
from server.metastore import Principal
from server.services import Services

log = logging.getLogger("ferry.api")
API = "/api/v1"
MAX_JSON_BODY = 8 * 1024 * 1024  # a commit of a ~100 GB file names ~100,000 blocks (~8 MB of JSON)

_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.EXISTS: 409,
    ErrorCode.MISSING_BLOCKS: 409,
    ErrorCode.NOT_A_DIRECTORY: 409,
    ErrorCode.IS_A_DIRECTORY: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BUSY: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}


class HttpError(Exception):
    """An error only HTTP has (a bad range, an unsupported image): its own
    status and code, in the same body shape as a :class:`ProtocolError`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(e: ProtocolError | HttpError) -> JSONResponse:
    body: dict[str, Any]
    if isinstance(e, HttpError):
        status, body, headers = e.status, {"code": e.code, "message": e.message}, dict(e.headers or {})
    else:
        status, body, headers = _STATUS.get(e.code, 400), {"code": e.code.value, "message": e.message}, {}
        if e.detail:
            body["detail"] = e.detail
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ferry"'
    return JSONResponse(body, status_code=status, headers=headers)


Handler = Callable[[Request, Principal, Services], Awaitable[Response]]


def authed(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running ``handler`` for the device the request's token names."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        try:
            who = await services.authenticate(request.headers.get("authorization", ""))
            return await handler(request, who, services)
        except (ProtocolError, HttpError) as e:
            return error_response(e)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(ProtocolError(ErrorCode.INTERNAL, "internal error; see the server log"))

    return endpoint


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON with entries, hashes and the like in their wire form (hex hashes)."""
    return Response(orjson.dumps(_wire(body)), status, headers, media_type="application/json")


def _wire(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return framing.to_wire(value)


# --- parameters -----------------------------------------------------------------------


def path_param(request: Request, name: str = "path", default: str | None = "/") -> str:
    value = request.query_params.get(name, default)
    if value is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"the query parameter {name!r} is required")
    return validate_path(value)


def int_param(
    request: Request, name: str, default: int | None, lo: int = 0, hi: int = 2**63 - 1
) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not re.fullmatch(r"-?\d{1,19}", text) or not lo <= int(text) <= hi:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be a whole number from {lo} to {hi}")
    return int(text)


def ns_param(request: Request) -> int | None:
    """``ns``: a namespace the user is a member of; absent means their root."""
    return int_param(request, "ns", None)


def hash_param(text: str) -> bytes:
    try:
        return parse_hash(text.lower())
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{text[:80]!r} is not a SHA-256 in hex") from None


async def json_body(request: Request, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    raw = await read_body(request, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"the body must be a JSON object: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
    return body


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit``:
    before reading when Content-Length says so, else while streaming it."""
    too_big = ProtocolError(ErrorCode.TOO_LARGE, f"the request body exceeds the {limit}-byte limit")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def idempotency_key(request: Request, body: dict[str, Any]) -> str:
    key = request.headers.get("idempotency-key") or body.get("key")
    if not isinstance(key, str) or not key:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            'a change needs an idempotency key (Idempotency-Key header or "key"); retry with the same one',
        )
    return key


# --- cursors --------------------------------------------------------------------------

_CURSOR = re.compile(r"c1\.(\d{1,18})\.(\d{1,18})")


def make_cursor(ns: int, seq: int) -> str:
    """An opaque cursor: the namespace and the journal seq already seen."""
    return f"c1.{ns}.{seq}"


def parse_cursor(text: str | None) -> tuple[int, int]:
    match = _CURSOR.fullmatch(text or "")
    if match is None:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"malformed cursor {(text or '')[:80]!r}; use one this server returned"
            f" (GET {API}/cursor gives the latest)",
        )
    return int(match.group(1)), int(match.group(2))
