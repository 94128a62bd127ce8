"""``GET /s/<token>``: read-only links, no login.

A link names a path in a namespace. The token (192 random bits) is looked up
by its SHA-256, so the database never holds a usable token. Unknown, expired
and revoked links, and links whose path is gone, all answer the same bare 404.
A file is served with single-range ``Range`` support; a folder as a zip
streamed as it is built (stored, not compressed: the bytes are read block by
block and never held whole). Everything is sent as a download
(``application/octet-stream``, ``nosniff``), never rendered on this origin.

A password-protected link takes the password by HTTP Basic auth (any user
name) or an ``X-Ferry-Link-Password`` header. After ``MAX_FAILURES`` wrong
passwords within ``FAILURE_WINDOW`` the link refuses every attempt (429) until
the window ends; the count lives in the database, so it holds across server
processes.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from protocol.errors import ProtocolError
from protocol.messages import Entry
from protocol.paths import name_of
from server import auth
from server.metastore import _VERSION_COLS, _VERSION_FROM, _entry
from server.services import Services, translate_errors
from server.sharing import link_digest

MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
PAGE = 500
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404, headers={"Cache-Control": "no-store"})


async def serve(request: Request) -> Response:
    services: Services = request.app.state.services
    token = request.path_params["token"]
    try:
        with translate_errors():
            link = await services.meta.pool.fetchrow(
                "SELECT namespace_id, link_id, path, password_hash FROM links"
                " WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                link_digest(token),
            )
            if link is None:
                return _not_found()
            if link["password_hash"] is not None:
                refused = await _check_password(services, link, _password(request))
                if refused is not None:
                    return refused
            entry = await _head(services, link["namespace_id"], link["path"])
    except ProtocolError as e:
        return PlainTextResponse(e.message, status_code=503)
    if entry is None:
        return _not_found()
    if entry.kind == "dir":
        name = (
            name_of(entry.path) if entry.path != "/" else await _folder_name(services, link["namespace_id"])
        )
        return StreamingResponse(
            _zip(services, link["namespace_id"], entry, name),
            media_type="application/zip",
            headers=_download_headers(name + ".zip"),
        )
    return _serve_file(services, request, entry)


async def _folder_name(services: Services, ns: int) -> str:
    with translate_errors():
        name = await services.meta.pool.fetchval("SELECT name FROM namespaces WHERE namespace_id = $1", ns)
    return str(name or "folder")


def _password(request: Request) -> str | None:
    given = request.headers.get("x-ferry-link-password")
    if given is not None:
        return given
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            return base64.b64decode(header[6:].strip()).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


async def _check_password(services: Services, link: Any, password: str | None) -> Response | None:
    """None if the password is right; else the response that refuses it.

    Each attempt first takes one of the window's ``MAX_FAILURES`` tries in one
    atomic update (so parallel guesses cannot all slip in before the count
    moves), and a right password gives it back."""
    ask = {"WWW-Authenticate": 'Basic realm="ferry link", charset="UTF-8"', "Cache-Control": "no-store"}
    if password is None:
        return PlainTextResponse("this link needs a password", status_code=401, headers=ask)
    pool, key = services.meta.pool, (link["namespace_id"], link["link_id"])
    tries = await pool.fetchrow(
        "UPDATE links SET"
        " failures = CASE WHEN failures_from IS NULL OR failures_from <= now() - $3::interval"
        "   THEN 1 ELSE failures + 1 END,"
        " failures_from = CASE WHEN failures_from IS NULL OR failures_from <= now() - $3::interval"
        "   THEN now() ELSE failures_from END"
        " WHERE namespace_id = $1 AND link_id = $2 RETURNING failures, failures_from",
        *key,
        FAILURE_WINDOW,
    )
    if tries["failures"] > MAX_FAILURES:
        wait = int((tries["failures_from"] + FAILURE_WINDOW - datetime.now(UTC)).total_seconds()) + 1
        return PlainTextResponse(
            "too many wrong passwords; try again later",
            status_code=429,
            headers={"Retry-After": str(max(wait, 1))},
        )
    if not await auth.verify_password(link["password_hash"], password):
        return PlainTextResponse("wrong password", status_code=401, headers=ask)
    await pool.execute(
        "UPDATE links SET failures = greatest(failures - 1, 0) WHERE namespace_id = $1 AND link_id = $2", *key
    )
    return None


async def _head(services: Services, ns: int, path: str) -> Entry | None:
    if path == "/":
        return Entry("/", "dir", 0, 0)
    row = await services.meta.pool.fetchrow(
        f"SELECT {_VERSION_COLS} FROM heads h JOIN {_VERSION_FROM}"
        " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
        " WHERE h.namespace_id = $1 AND h.path = $2",
        ns,
        path,
    )
    return _entry(row, with_blocks=True) if row else None


def _download_headers(name: str) -> dict[str, str]:
    return {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


def _serve_file(services: Services, request: Request, entry: Entry) -> Response:
    headers = _download_headers(name_of(entry.path))
    headers["Accept-Ranges"] = "bytes"
    if entry.content_hash:
        headers["ETag"] = f'"{entry.content_hash.hex()}"'
    size, start, end, status = entry.size, 0, entry.size, 200
    wanted = request.headers.get("range")
    match = _RANGE.fullmatch(wanted.strip()) if wanted else None
    if match and (match[1] or match[2]):
        if not match[1]:  # the last N bytes
            start, end = max(size - int(match[2]), 0), size
        else:
            start, end = int(match[1]), min(int(match[2]) + 1 if match[2] else size, size)
        if start >= size or start >= end:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        status = 206
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")
    return StreamingResponse(
        _file_bytes(services, entry, start, end),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


async def _file_bytes(services: Services, entry: Entry, start: int, end: int) -> AsyncIterator[bytes]:
    offset = 0
    for block in entry.blocks or []:
        lo, hi = offset, offset + block.size
        offset = hi
        if hi <= start:
            continue
        if lo >= end:
            return
        with translate_errors():
            data = await services.blocks.get(block.hash)
        yield data[max(start - lo, 0) : min(end, hi) - lo]


class _Sink(io.RawIOBase):
    """Where ``zipfile`` writes: collects bytes for the response to take."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


async def _zip(services: Services, ns: int, folder: Entry, name: str) -> AsyncIterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        async for entry in _walk(services, ns, folder.path):
            arcname = name + entry.path[len(folder.path.rstrip("/")) :]
            info = zipfile.ZipInfo(arcname + ("/" if entry.kind == "dir" else ""), _zip_time(entry.mtime_ns))
            if entry.kind == "dir":
                info.external_attr = (0o40755 << 16) | 0x10
                archive.writestr(info, b"")
            else:
                info.external_attr = (0o100755 if entry.executable else 0o100644) << 16
                info.file_size = entry.size
                with archive.open(info, "w", force_zip64=entry.size >= zipfile.ZIP64_LIMIT) as out:
                    for block in entry.blocks or []:
                        with translate_errors():
                            out.write(await services.blocks.get(block.hash))
                        yield sink.take()
            yield sink.take()
    yield sink.take()


async def _walk(services: Services, ns: int, folder: str) -> AsyncIterator[Entry]:
    """Every live entry under ``folder``, by path (parents first), a page at a time."""
    low, high = ("/", "0") if folder == "/" else (folder + "/", folder + "0")
    after = low
    while True:
        rows = await services.meta.pool.fetch(
            f"SELECT {_VERSION_COLS} FROM heads h JOIN {_VERSION_FROM}"
            " ON v.namespace_id = h.namespace_id AND v.version_id = h.version_id"
            " WHERE h.namespace_id = $1 AND h.path > $2 AND h.path < $3 ORDER BY h.path LIMIT $4",
            ns,
            after,
            high,
            PAGE,
        )
        for r in rows:
            yield _entry(r, with_blocks=True)
        if len(rows) < PAGE:
            return
        after = rows[-1]["path"]


def _zip_time(mtime_ns: int) -> tuple[int, int, int, int, int, int]:
    when = datetime.fromtimestamp(mtime_ns / 1e9, UTC) if mtime_ns else datetime.now(UTC)
    when = min(max(when, datetime(1980, 1, 1, tzinfo=UTC)), datetime(2107, 12, 31, tzinfo=UTC))
    return (when.year, when.month, when.day, when.hour, when.minute, when.second)
