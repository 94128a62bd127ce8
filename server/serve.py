"""Running the server process: database, uvicorn (uvloop + websockets), shutdown."""

from __future__ import annotations

import logging
import os
import signal
import sys

import uvicorn

from server import db
from server.app import create_app
from server.bounds import ShortCloseProtocol, head_timeout_protocol
from server.config import Settings
from server.memory import limit_malloc_arenas

log = logging.getLogger("ferry")


def serve(settings: Settings) -> int:
    limit_malloc_arenas()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    embedded = settings.database_url is None
    try:
        url = db.embedded_database_url(settings.data_dir) if embedded else settings.database_url
    except Exception as e:
        print(
            f"ferry: cannot start the embedded PostgreSQL under {settings.data_dir}/pg: {e}", file=sys.stderr
        )
        return 1
    assert url is not None
    app = create_app(settings, url)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=head_timeout_protocol(settings.handshake_timeout),
        ws=os.environ.get("FERRY_WS_IMPL") or ShortCloseProtocol,
        ws_max_size=settings.max_frame,
        ws_per_message_deflate=False,  # block frames are incompressible; no deflate bombs
        # no WebSocket-level pings: the protocol's own ping and --idle-timeout
        # find dead peers (whichever ws implementation runs), and a ping task
        # per connection was a third of the server's CPU with 6,000 idle ones
        ws_ping_interval=None,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    base = f"http://{settings.host}:{settings.port}"
    dd = "" if str(settings.data_dir) == "ferry-data" else f" --data-dir {settings.data_dir}"
    print(
        f"Ferry server starting on {base} (blocks: {settings.block_spec}; database: "
        f"{'embedded under ' + str(settings.data_dir / 'pg') if embedded else 'external'})",
        flush=True,
    )
    print(f"  add a user:  ferry admin user add alice --password-stdin{dd}", flush=True)
    print(f"  log in:      ferry login {base} --user alice --password-stdin", flush=True)  # fmt: skip
    # uvicorn re-raises the signal that stopped it once it has shut down;
    # a no-op SIGTERM handler lets us stop the embedded database after it.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        if embedded:
            db.stop_embedded(settings.data_dir)
    return 0 if server.started else 1
