"""``GET /metrics``: counters in the Prometheus text format.

Only answered to requests from the server's own machine (loopback): the
counters say how busy the server is, which is nobody else's business, and a
scraper runs beside the server (or reaches it through an SSH tunnel).
Counted per process: with several server processes, scrape each.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response


@dataclass
class Counters:
    block_bytes_sent_total: int = 0  # block bytes sent to clients (WebSocket and HTTP API)
    block_requests_total: int = 0  # blocks sent to clients
    block_bytes_received_total: int = 0  # block bytes clients uploaded
    lan_tickets_issued_total: int = 0


HELP = {
    "block_bytes_sent_total": "Block bytes sent to clients",
    "block_requests_total": "Blocks sent to clients",
    "block_bytes_received_total": "Block bytes received from clients",
    "lan_tickets_issued_total": "LAN peer tickets issued to devices",
}
COUNTERS = Counters()


def render(counters: Counters) -> str:
    lines = []
    for f in fields(counters):
        name = f"ferry_{f.name}"
        lines += [
            f"# HELP {name} {HELP[f.name]}",
            f"# TYPE {name} counter",
            f"{name} {getattr(counters, f.name)}",
        ]
    return "\n".join(lines) + "\n"


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # 127.0.0.1 as a dual-stack socket shows it
    return bool((mapped or address).is_loopback)


async def metrics(request: Request) -> Response:
    if not _loopback(request):
        return PlainTextResponse("/metrics is only served to the server's own machine\n", status_code=403)
    return PlainTextResponse(render(COUNTERS), media_type="text/plain; version=0.0.4")
