"""The Starlette application: WebSocket sync endpoint, HTTP login, read-only links, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from protocol.errors import ErrorCode, ProtocolError
from server import db, gc, links, ws
from server.blockstore import open_block_store
from server.config import Settings
from server.metastore import MetaStore
from server.notifier import Notifier
from server.services import Services, translate_errors

log = logging.getLogger("ferry.app")
MAX_LOGIN_BODY = 16 * 1024
_STATUS = {ErrorCode.UNAUTHORIZED: 401, ErrorCode.BAD_REQUEST: 400, ErrorCode.UNAVAILABLE: 503}


def error_response(e: ProtocolError) -> JSONResponse:
    return JSONResponse({"error": e.code.value, "message": e.message}, status_code=_STATUS.get(e.code, 400))


async def login(request: Request) -> Response:
    """POST /api/v1/login {"user", "password", "device"} → {"token", "device_id", "user"}."""
    services: Services = request.app.state.services
    try:
        body = await request.body()
        if len(body) > MAX_LOGIN_BODY:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "request body too large")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "body must be JSON: {user, password, device}"
            ) from None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("user", "password")):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "body must be JSON: {user, password, device}")
        device = str(data["device"]) if isinstance(data.get("device"), str) else "device"
        with translate_errors():
            token, device_id = await services.meta.login(data["user"], data["password"], device)
    except ProtocolError as e:
        return error_response(e)
    return JSONResponse({"token": token, "device_id": device_id, "user": data["user"]})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "server": ws.SERVER_NAME})


def create_app(settings: Settings, database_url: str) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # block hashing and fsyncs run in worker threads; several per in-flight block
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
        pool = await db.create_pool(database_url)
        blocks = open_block_store(
            settings.block_spec,
            data_dir=settings.data_dir,
            s3_endpoint=settings.s3_endpoint,
            cache_bytes=settings.cache_bytes,
        )
        notifier = Notifier(database_url)
        await notifier.start()
        try:
            await blocks.check()
        except Exception as e:  # keep serving metadata; block requests will say why they fail
            log.error("block store not usable yet: %s", e)
        app.state.services = Services(settings, MetaStore(pool), blocks, notifier)
        await gc.record_settings(pool, settings, str(getattr(blocks, "url", settings.block_spec)))
        collector = (
            asyncio.create_task(gc.run_periodically(pool, blocks, settings)) if settings.gc_every else None
        )
        try:
            yield
        finally:
            if collector is not None:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
            await notifier.stop()
            await blocks.close()
            await pool.close()

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/api/v1/login", login, methods=["POST"]),
            Route("/s/{token}", links.serve, methods=["GET", "HEAD"]),
            WebSocketRoute("/ws", ws.endpoint),
        ],
        lifespan=lifespan,
    )
