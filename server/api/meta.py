"""Metadata routes: login, list, stat, the change feed and its long poll,
history and restore. Each calls the method :mod:`server.ws` calls for the
same request, which checks the user's membership of the namespace.

The long poll subscribes to the notifier *before* reading the namespace's
head, so a commit landing between the two still wakes it; a notice is only
a hint, so on waking it reads the head again and answers from that.
"""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from protocol.errors import ErrorCode, ProtocolError
from protocol.paths import validate_path
from server.api.common import (
    authed,
    error_response,
    idempotency_key,
    int_param,
    json_body,
    make_cursor,
    ns_param,
    ok,
    parse_cursor,
    path_param,
    read_body,
)
from server.metastore import Principal
from server.services import Services, translate_errors
from server.versions import VersionStore

MAX_LOGIN_BODY = 16 * 1024
MAX_WAIT = 120  # seconds a long poll may be held


async def login(request: Request) -> Response:
    """
    ---
    summary: "Log a device in; returns its device token (send it as `Authorization: Bearer <token>`)"
    security: []
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [user, password], properties: {user: {type: string}, password: {type: string}, device: {type: string}}}
    responses:
      200: {description: '{"token", "device_id", "user", "lan_key"}: lan_key is the Ed25519 key (hex) LAN peer tickets are signed with'}
      401: {description: wrong user name or password}
    """
    services: Services = request.app.state.services
    try:
        data = orjson.loads(await read_body(request, MAX_LOGIN_BODY) or b"null")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("user", "password")):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "body must be JSON: {user, password, device}")
        device = str(data["device"]) if isinstance(data.get("device"), str) else "device"
        with translate_errors():
            token, device_id = await services.meta.login(data["user"], data["password"], device)
    except orjson.JSONDecodeError:
        return error_response(
            ProtocolError(ErrorCode.BAD_REQUEST, "body must be JSON: {user, password, device}")
        )
    except ProtocolError as e:
        return error_response(e)
    body = {"token": token, "device_id": device_id, "user": data["user"]}
    if services.lan is not None:  # the key LAN peers' tickets are checked with (server.lan)
        body["lan_key"] = services.lan.public_hex
    return JSONResponse(body)


@authed
async def logout(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Log this device out: its token stops working at once and its live connections close"
    responses:
      200: {description: '{"device_id", "device"}: the device that was logged out'}
      401: {description: no valid device token}
    """
    with translate_errors():
        await services.meta.revoke_device(who.device_id, who.user_id)
    return JSONResponse({"device_id": who.device_id, "device": who.device})


@authed
async def list_folder(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "List a folder, one page at a time (entries without their block lists)"
    parameters:
      - {name: path, in: query, schema: {type: string, default: /}}
      - {name: after, in: query, description: "the `next` of the previous page", schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, default: 1000, maximum: 5000}}
      - {name: ns, in: query, description: namespace (default your root), schema: {type: integer}}
    responses:
      200: {description: '{"entries": [Entry], "next": path or null}'}
      404: {description: no such folder}
    """
    path, after = path_param(request), request.query_params.get("after")
    with translate_errors():
        entries, nxt = await services.meta.list_folder(
            who, path, ns_param(request), after, int_param(request, "limit", 1000, 1) or 1000
        )
    return ok({"entries": entries, "next": nxt})


@authed
async def stat(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "One file or folder with its block list (hash and size of each block, in order)"
    parameters:
      - {name: path, in: query, required: true, schema: {type: string}}
      - {name: ns, in: query, schema: {type: integer}}
    responses:
      200: {description: 'Entry: {path, kind, file_id, version, size, mtime_ns, content_hash, blocks: [[hash, size]], ...}'}
      404: {description: no such file or folder}
    """
    with translate_errors():
        return ok(await services.meta.stat(who, path_param(request, default=None), ns_param(request)))


@authed
async def namespaces(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "The namespaces in the user's tree: their root, and each shared folder where it is mounted"
    responses:
      200: {description: '{"namespaces": [{"ns": int, "path": string, "role": "owner|editor|viewer", "head_seq": int}]}'}
    """
    with translate_errors():
        spaces = await services.meta.namespaces(who)
    return ok({"namespaces": spaces})


async def _head(services: Services, who: Principal, ns: int | None) -> tuple[int, int]:
    """(namespace, head seq) of one of the user's namespaces (None: the root)."""
    with translate_errors():
        spaces = await services.meta.namespaces(who)
    for space in spaces:
        if space.ns == (who.root_ns if ns is None else ns):
            return space.ns, space.head_seq
    raise ProtocolError(ErrorCode.NOT_FOUND, f"no namespace {ns} visible to you")


@authed
async def cursor(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "The latest cursor, to follow changes from now on without listing the past"
    parameters:
      - {name: ns, in: query, schema: {type: integer}}
    responses:
      200: {description: '{"cursor": string}'}
    """
    ns, head = await _head(services, who, ns_param(request))
    return ok({"cursor": make_cursor(ns, head)})


@authed
async def changes(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Metadata changes since a cursor (no file bytes), oldest first, paginated"
    description: "Without a cursor, from the beginning of the namespace's journal. Call again with the returned cursor while has_more is true."
    parameters:
      - {name: cursor, in: query, schema: {type: string}}
      - {name: limit, in: query, schema: {type: integer, default: 1000, maximum: 5000}}
      - {name: ns, in: query, schema: {type: integer}}
    responses:
      200: {description: '{"entries": [Entry], "cursor": string, "has_more": bool}'}
      400: {description: malformed cursor, or a cursor this namespace never gave (resync from the start)}
    """
    text = request.query_params.get("cursor")
    ns, since = parse_cursor(text) if text else (ns_param(request), 0)
    limit = int_param(request, "limit", 1000, 1) or 1000
    with translate_errors():
        ns_id, entries, seq, more = await services.meta.list_changes(who, ns, since, limit)
    return ok({"entries": entries, "cursor": make_cursor(ns_id, seq), "has_more": more})


@authed
async def wait_changes(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Long poll; answers as soon as the cursor is stale, or after timeout seconds"
    description: 'For clients that keep no socket open. It returns no entries; on "changes" true, call /changes with the same cursor.'
    parameters:
      - {name: cursor, in: query, required: true, schema: {type: string}}
      - {name: timeout, in: query, schema: {type: integer, default: 30, minimum: 1, maximum: 120}}
    responses:
      200: {description: '{"changes": bool}'}
      400: {description: malformed cursor}
    """
    ns, seq = parse_cursor(request.query_params.get("cursor"))
    timeout = int_param(request, "timeout", 30, 1, MAX_WAIT) or 30
    woke = asyncio.Event()

    def on_change(_ns: int, notified: int) -> None:
        if notified < 0 or notified > seq:  # < 0: the notifier reconnected, look again
            woke.set()

    services.notifier.subscribe(ns, on_change)
    try:
        ns, head = await _head(services, who, ns)
        if seq > head:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"cursor is ahead of the namespace (head {head}); resync"
            )
        if head == seq:
            await _park(request, woke, timeout)
            if woke.is_set():
                ns, head = await _head(services, who, ns)
    finally:
        services.notifier.unsubscribe(ns, on_change)
    return ok({"changes": head > seq})


async def _park(request: Request, woke: asyncio.Event, timeout: float) -> None:
    """Wait for ``woke``, the timeout, or the client hanging up (a phone that
    lost its network should not hold a parked request until the timeout)."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waits = {asyncio.ensure_future(woke.wait()), asyncio.ensure_future(hung_up())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


@authed
async def history(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Every version of a file, newest first, following it across renames"
    parameters:
      - {name: path, in: query, required: true, schema: {type: string}}
      - {name: before, in: query, description: "the `next` of the previous page", schema: {type: integer}}
      - {name: limit, in: query, schema: {type: integer, default: 1000}}
      - {name: ns, in: query, schema: {type: integer}}
    responses:
      200: {description: '{"versions": [{entry, author, current, damaged}], "next": int or null}'}
      404: {description: no such file, now or in its history}
    """
    path = path_param(request, default=None)
    before, limit = int_param(request, "before", None), int_param(request, "limit", 1000, 1) or 1000
    with translate_errors():
        infos, nxt = await VersionStore(services.meta).history(who, path, ns_param(request), before, limit)
    return ok({"versions": infos, "next": nxt})


@authed
async def restore(request: Request, who: Principal, services: Services) -> Response:
    """
    ---
    summary: "Make an old version current again (as a new version), or undelete a path"
    parameters:
      - {name: Idempotency-Key, in: header, description: or "key" in the body, schema: {type: string}}
    requestBody:
      content:
        application/json:
          schema: {type: object, required: [path], properties: {path: {type: string}, version: {type: integer}, ns: {type: integer}, key: {type: string}}}
    responses:
      200: {description: '{"seq", "entry", "changes"}'}
      404: {description: no such version}
    """
    body = await json_body(request)
    path, version, ns = body.get("path"), body.get("version"), body.get("ns")
    if (version is not None and type(version) is not int) or (ns is not None and type(ns) is not int):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "version and ns must be integers")
    key = idempotency_key(request, body)
    with translate_errors():
        seq, entry, count = await VersionStore(services.meta).restore(
            who, key, ns, validate_path(path), version
        )
    return ok({"seq": seq, "entry": entry, "changes": count})
