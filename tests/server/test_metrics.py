"""/metrics: Prometheus text, only for the server's own machine."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from server import metrics


def test_metrics_render_every_counter() -> None:
    text = metrics.render(metrics.Counters(block_bytes_sent_total=5, block_requests_total=2))
    assert "# TYPE ferry_block_bytes_sent_total counter\nferry_block_bytes_sent_total 5\n" in text
    assert "ferry_block_requests_total 2\n" in text
    assert "ferry_lan_tickets_issued_total 0\n" in text


def _get(client: tuple[str, int]) -> tuple[int, str]:
    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": [], "client": client}
    response = asyncio.run(metrics.metrics(Request(scope)))
    return response.status_code, bytes(response.body).decode()


def test_metrics_refused_to_other_machines() -> None:
    assert _get(("192.0.2.7", 4000))[0] == 403
    assert _get(("::ffff:10.0.0.1", 4000))[0] == 403
    status, body = _get(("127.0.0.1", 4000))
    assert status == 200 and "ferry_block_bytes_sent_total" in body
    assert _get(("::1", 4000))[0] == 200
    assert _get(("::ffff:127.0.0.1", 4000))[0] == 200
