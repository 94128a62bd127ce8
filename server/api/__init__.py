"""The HTTP API under ``/api/v1``, for phones (``mobile_sdk``), browsers and scripts.

Terms:

route
    One method and path under ``/api/v1``; each is a thin handler over the
    same services the WebSocket uses (``MetaStore``, ``VersionStore``,
    ``Services.get_block``/``put_block``), so commit, listing, auth and the
    readable-block rule exist once.
cursor
    An opaque string (``c1.<namespace>.<seq>``) naming the journal entries a
    client has seen; ``/changes`` pages from it and ``/changes/wait`` holds a
    request open until it is stale.
error
    Every failure is JSON ``{"code", "message"}`` with the HTTP status of its
    code (401 bad token, 404 not found or not yours, 409 conflict, 413 too
    large, 416 bad range, 503 store unavailable...).

The OpenAPI document (``/api/v1/openapi.json``) is generated from the routes
themselves, from the YAML after ``---`` in each handler's docstring.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from server.api import files, meta, thumbnails, tree
from server.api.common import API

schemas = SchemaGenerator(
    {
        "openapi": "3.0.3",
        "info": {"title": "Ferry HTTP API", "version": "1"},
        "components": {"securitySchemes": {"device": {"type": "http", "scheme": "bearer"}}},
        "security": [{"device": []}],
    }
)


def openapi(request: Request) -> Response:
    """
    ---
    summary: "This document"
    security: []
    responses:
      200: {description: OpenAPI 3 document of every /api/v1 route}
    """
    return JSONResponse(schemas.get_schema(routes=request.app.routes))


def routes() -> list[Route]:
    return [
        Route(f"{API}/login", meta.login, methods=["POST"]),
        Route(f"{API}/logout", meta.logout, methods=["POST"]),
        Route(f"{API}/list", meta.list_folder),
        Route(f"{API}/stat", meta.stat),
        Route(f"{API}/cursor", meta.cursor),
        Route(f"{API}/namespaces", meta.namespaces),
        Route(f"{API}/changes", meta.changes),
        Route(f"{API}/changes/wait", meta.wait_changes),
        Route(f"{API}/history", meta.history),
        Route(f"{API}/restore", meta.restore, methods=["POST"]),
        Route(f"{API}/download", files.download),
        Route(f"{API}/blocks/missing", files.missing_blocks, methods=["POST"]),
        Route(f"{API}/blocks/{{hash}}", files.get_block),
        Route(f"{API}/blocks/{{hash}}", files.put_block, methods=["PUT"]),
        Route(f"{API}/commit", files.commit, methods=["POST"]),
        Route(f"{API}/mkdir", tree.mkdir, methods=["POST"]),
        Route(f"{API}/move", tree.move, methods=["POST"]),
        Route(f"{API}/delete", tree.delete, methods=["POST"]),
        Route(f"{API}/thumbnail", thumbnails.thumbnail),
        Route(f"{API}/openapi.json", openapi),
    ]
