"""Tree changes: make a folder, move or rename, delete. Each is the WebSocket's
``mkdir``/``move``/``delete`` (the same ``MetaStore`` transaction, journaled,
idempotent by key, pushed to other devices)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import validate_path
from server.api.common import authed, idempotency_key, json_body, ok
from server.metastore import Principal
from server.services import Services, translate_errors


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and type(value) is not int:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{name} must be an integer")
    return value


@authed
async def mkdir(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Make a folder and any missing parents (an existing folder is not an error)"
    parameters:
      - {name: Idempotency-Key, in: header, description: 'or "key" in the body', schema: {type: string}}
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [path], properties: {path: {type: string}, ns: {type: integer}, key: {type: string}}}
    responses:
      200: {description: '{"seq", "entry"}'}
      409: {description: a file is already there}
    """
    body = await json_body(request)
    key, ns = idempotency_key(request, body), _opt_int(body, "ns")
    with translate_errors():
        seq, entry = await services.meta.mkdir(who, key, ns, validate_path(body.get("path")))
    return ok({"seq": seq, "entry": entry})


@authed
async def move(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Move or rename a file or a whole folder (no bytes move; history follows it)"
    parameters:
      - {name: Idempotency-Key, in: header, description: 'or "key" in the body', schema: {type: string}}
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [src, dst], properties: {src: {type: string}, dst: {type: string}, parent: {type: integer, description: if set, src must still be at this version}, ns: {type: integer}, key: {type: string}}}
    responses:
      200: {description: '{"seq", "entry"}'}
      404: {description: no such file or folder}
      409: {description: something is already at dst, or src changed since parent}
    """
    body = await json_body(request)
    key, ns, parent = idempotency_key(request, body), _opt_int(body, "ns"), _opt_int(body, "parent")
    src, dst = validate_path(body.get("src")), validate_path(body.get("dst"))
    with translate_errors():
        seq, entry = await services.meta.move(who, key, ns, src, dst, parent)
    return ok({"seq": seq, "entry": entry})


@authed
async def delete(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Delete a file, or a folder and everything in it (restorable: see /restore)"
    parameters:
      - {name: Idempotency-Key, in: header, description: 'or "key" in the body', schema: {type: string}}
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [path], properties: {path: {type: string}, parent: {type: integer, description: if set, path must still be at this version}, ns: {type: integer}, key: {type: string}}}
    responses:
      200: {description: '{"seq", "entry"}: the deletion'}
      404: {description: no such file or folder}
      409: {description: changed since parent}
    """
    body = await json_body(request)
    key, ns, parent = idempotency_key(request, body), _opt_int(body, "ns"), _opt_int(body, "parent")
    with translate_errors():
        seq, entry = await services.meta.delete(who, key, ns, validate_path(body.get("path")), parent)
    return ok({"seq": seq, "entry": entry})
