"""HTTP to a Ferry server's ``/api/v1``: bearer token, retries, error types.

Retry policy, for a phone whose network comes and goes:

- A request that never reached the server (connection refused, no route,
  DNS failure: ``httpx.ConnectError``) raises :class:`OfflineError` at once,
  so an app offline opens cached files without waiting out a backoff.
- A request that may have reached it (timeout, connection cut mid-reply) or
  that it answered 429 or 5xx is retried with exponential backoff and full
  jitter, waiting at least what ``Retry-After`` asks; after ``retries``
  retries the last failure is raised (:class:`OfflineError` for a network
  failure). Retrying is safe because every change the API accepts carries an
  idempotency key and every read is idempotent.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx

from mobile_sdk.errors import ApiError, NotLoggedIn, OfflineError

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0


@dataclass
class Stats:
    """What went over the network, for tests, benchmarks and data-saver UIs."""

    requests: int = 0
    bytes_received: int = 0  # response bodies
    bytes_sent: int = 0  # request bodies
    blocks_fetched: int = 0
    retries: int = 0


def retry_delay(attempt: int, retry_after: str | None, base: float, cap: float) -> float:
    """Full jitter over ``base * 2**attempt`` (capped), but never less than a
    ``Retry-After`` given in seconds (HTTP dates are treated as absent)."""
    delay = random.uniform(0, min(cap, base * 2**attempt))
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
    return delay


class Transport:
    def __init__(
        self,
        server_url: str,
        *,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.token: str | None = None
        self.stats = Stats()
        self.http = httpx.AsyncClient(
            base_url=self.server_url + "/api/v1", timeout=timeout, transport=transport, trust_env=False
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, url: str, *, auth: bool = True, **kw: Any) -> httpx.Response:
        """One API call, retried as the module says; an :class:`ApiError` for a 4xx/5xx answer."""
        headers = dict(kw.pop("headers", None) or {})
        if auth:
            if self.token is None:
                raise NotLoggedIn("not logged in: call login(user, password) first")
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = await self.http.request(method, url, headers=headers, **kw)
            except httpx.ConnectError as e:
                raise OfflineError(f"cannot reach {self.server_url}: {e or type(e).__name__}") from e
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                if last:
                    raise OfflineError(f"{self.server_url} stopped answering: {e or type(e).__name__}") from e
                await self._pause(attempt, None)
                continue
            self._count(r, kw)
            if r.status_code in RETRY_STATUS and not last:
                await self._pause(attempt, r.headers.get("retry-after"))
                continue
            if r.status_code >= 400:
                raise ApiError.from_response(r)
            return r
        raise AssertionError("unreachable")

    async def json(self, method: str, url: str, **kw: Any) -> Any:
        return (await self.request(method, url, **kw)).json()

    async def _pause(self, attempt: int, retry_after: str | None) -> None:
        self.stats.retries += 1
        await asyncio.sleep(retry_delay(attempt, retry_after, self.backoff, self.max_backoff))

    def _count(self, r: httpx.Response, kw: dict[str, Any]) -> None:
        self.stats.requests += 1
        self.stats.bytes_received += len(r.content)
        body = kw.get("content")
        if isinstance(body, bytes | bytearray | memoryview):
            self.stats.bytes_sent += len(body)
