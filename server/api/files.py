"""Byte routes: file download with HTTP Range, blocks by hash, and upload as
"which blocks are missing" → PUT each → commit.

Upload is resumable by construction: a block a user has PUT stays readable
by them (``MetaStore._READABLE``), so after an interruption ``blocks/missing``
names only what never arrived; and the commit's idempotency key makes a
retried commit return the first result instead of a second version.

A block is served by hash only to a user who may read it — the same rule
(and the same 404 for "not yours" as for "does not exist") as the WebSocket's
``get_block``, through :meth:`Services.get_block`.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import AsyncIterator, Sequence

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from protocol import framing
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import BlockRef, Entry, FileCommit
from protocol.paths import validate_path
from server.api.common import (
    HttpError,
    authed,
    hash_param,
    idempotency_key,
    int_param,
    json_body,
    ns_param,
    ok,
    path_param,
    read_body,
)
from server.metastore import Principal
from server.services import Services, translate_errors
from server.versions import VersionStore
from server.ws import MAX_QUERY_HASHES

IMMUTABLE = "private, max-age=31536000, immutable"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` → (start, end) with end exclusive; None serves the
    whole file (no Range, another unit, several ranges, or a malformed one,
    which RFC 9110 lets a server ignore). Unsatisfiable → 416."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(0) == "bytes=-":
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start, end = int(first), (min(int(last) + 1, size) if last else size)
        if last and int(last) < start:
            return None
    else:
        start, end = max(0, size - int(last)), size
    if start >= size or end <= start:
        raise HttpError(
            416,
            "bad_range",
            f"range {header!r} is outside the file ({size} bytes)",
            {"Content-Range": f"bytes */{size}"},
        )
    return start, end


async def stream_range(
    services: Services, who: Principal, blocks: Sequence[BlockRef], start: int, end: int
) -> AsyncIterator[bytes]:
    """The bytes [start, end) of a file, reading only the blocks that cover them."""
    offsets = list(itertools.accumulate((b.size for b in blocks), initial=0))
    i = bisect.bisect_right(offsets, start) - 1
    while i < len(blocks) and offsets[i] < end:
        data = await services.get_block(who, blocks[i].hash)
        lo, hi = max(start - offsets[i], 0), min(end - offsets[i], blocks[i].size)
        yield data[lo:hi]
        i += 1


async def file_entry(services: Services, who: Principal, request: Request) -> Entry:
    """The file at ``path`` (or its ``version``), with its blocks."""
    path, ns, version = (
        path_param(request, default=None),
        ns_param(request),
        int_param(request, "version", None),
    )
    with translate_errors():
        if version is None:
            entry = await services.meta.stat(who, path, ns)
        else:
            entry = (await VersionStore(services.meta).get_version(who, path, ns, version)).entry
    if entry.kind != "file":
        raise ProtocolError(ErrorCode.IS_A_DIRECTORY, f"{path} is a folder; list it instead")
    return entry


@authed
async def download(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "A file's bytes (or an older version's); honours a single `Range: bytes=` range"
    parameters:
      - {name: path, in: query, required: true, schema: {type: string}}
      - {name: version, in: query, schema: {type: integer}}
      - {name: ns, in: query, schema: {type: integer}}
      - {name: Range, in: header, schema: {type: string, example: bytes=0-1023}}
    responses:
      200: {description: the whole file; ETag is its content hash, X-Ferry-Version its version}
      206: {description: the requested range, with Content-Range}
      404: {description: no such file}
      416: {description: range outside the file}
    """
    entry = await file_entry(services, who, request)
    assert entry.content_hash is not None and entry.blocks is not None
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{entry.content_hash.hex()}"',
        "X-Ferry-Version": str(entry.version),
    }
    span = parse_range(request.headers.get("range"), entry.size)
    start, end = span or (0, entry.size)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":  # the headers only: read no block
        return Response(b"", 206 if span else 200, headers, media_type="application/octet-stream")
    return StreamingResponse(
        stream_range(services, who, entry.blocks, start, end),
        status_code=206 if span else 200,
        headers=headers,
        media_type="application/octet-stream",
    )


@authed
async def get_block(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "One block by its SHA-256, if you may read it (immutable; ETag is the hash)"
    parameters:
      - {name: hash, in: path, required: true, schema: {type: string}}
      - {name: If-None-Match, in: header, schema: {type: string}}
    responses:
      200: {description: the block's bytes}
      304: {description: not modified (the ETag matched and you may read it)}
      404: {description: no such block, or not one you may read (the same answer)}
    """
    h = hash_param(request.path_params["hash"])
    etag = f'"{h.hex()}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if etag in request.headers.get("if-none-match", ""):
        with translate_errors():
            if await services.meta.can_read_block(who, h):
                return Response(status_code=304, headers=headers)
    data = await services.get_block(who, h)
    return Response(data, headers=headers, media_type="application/octet-stream")


@authed
async def missing_blocks(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Which of these blocks must you upload before committing?"
    requestBody:
      content:
        application/json:
          schema: {type: object, properties: {hashes: {type: array, items: {type: string}}}}
    responses:
      200: {description: '{"missing": [hash]}'}
      413: {description: too many hashes in one request}
    """
    body = await json_body(request)
    hashes = body.get("hashes")
    if not isinstance(hashes, list) or len(hashes) > MAX_QUERY_HASHES:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f'send {{"hashes": [...]}} with at most {MAX_QUERY_HASHES}'
        )
    wanted = framing.from_wire(list[bytes], hashes, "hashes")
    with translate_errors():
        return ok({"missing": await services.meta.missing_blocks(who, wanted)})


@authed
async def put_block(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Upload one block; its bytes must hash to the name in the URL"
    parameters:
      - {name: hash, in: path, required: true, schema: {type: string}}
    requestBody:
      content:
        application/octet-stream: {schema: {type: string, format: binary}}
    responses:
      200: {description: '{"hash", "size"}: stored'}
      400: {description: the bytes do not match the hash}
      413: {description: larger than the server's block limit}
    """
    h = hash_param(request.path_params["hash"])
    data = await read_body(request, services.settings.max_block)
    await services.put_block(who, h, data)
    return ok({"hash": h, "size": len(data)})


@authed
async def commit(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Make a path a file made of these blocks, based on version `parent` (null for a new file)"
    description: "A stale parent is a 409 conflict carrying the current entry; blocks not yet uploaded are a 409 missing_blocks listing them. The same idempotency key returns the first result."
    parameters:
      - {name: Idempotency-Key, in: header, description: or "key" in the body, schema: {type: string}}
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [path, parent, size, mtime_ns, blocks], properties: {path: {type: string}, parent: {type: integer, nullable: true}, size: {type: integer}, mtime_ns: {type: integer}, blocks: {type: array, items: {type: string}}, executable: {type: boolean}, ns: {type: integer}, key: {type: string}}}
    responses:
      200: {description: '{"seq", "entry"}'}
      409: {description: conflict (stale parent) or missing_blocks}
    """
    body = await json_body(request)
    key = idempotency_key(request, body)
    f: FileCommit = framing.from_wire(FileCommit, body, "body")
    ns = body.get("ns")
    if ns is not None and type(ns) is not int:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "ns must be an integer")
    with translate_errors():
        seq, entry = await services.meta.commit_file(
            who, key, ns, validate_path(f.path), f.parent, f.size, f.mtime_ns, f.executable, f.blocks
        )
    return ok({"seq": seq, "entry": entry})
