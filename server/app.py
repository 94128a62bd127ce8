"""The Starlette application: WebSocket sync endpoint, HTTP API (``server.api``), read-only links, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from server import api, bounds, db, gc, links, memory, metrics, ws
from server.blockstore import open_block_store
from server.config import Settings
from server.lan import LanAuthority
from server.metastore import MetaStore
from server.notifier import Notifier
from server.services import Services

log = logging.getLogger("ferry.app")


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
        app.state.services = Services(settings, MetaStore(pool), blocks, notifier,
                                      LanAuthority(settings.data_dir, settings.lan_ticket_ttl))  # fmt: skip
        await gc.record_settings(pool, settings, str(getattr(blocks, "url", settings.block_spec)))
        collector = (
            asyncio.create_task(gc.run_periodically(pool, blocks, settings)) if settings.gc_every else None
        )
        freezer = asyncio.create_task(memory.keep_old_objects_out_of_gc())
        try:
            yield
        finally:
            freezer.cancel()
            if collector is not None:
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
            await notifier.stop()
            await blocks.close()
            await pool.close()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics.metrics),
            *api.routes(),
            Route("/s/{token}", links.serve, methods=["GET", "HEAD"]),
            WebSocketRoute("/ws", ws.endpoint),
        ],
        lifespan=lifespan,
    )
    app.state.sessions_per_ip = bounds.Counter(settings.max_connections_per_ip)
    app.state.sessions_per_user = bounds.Counter(settings.max_connections_per_user)
    return app
