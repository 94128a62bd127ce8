"""Group commit for small queries: many concurrent callers, one statement.

A client sending a thousand small blocks has a thousand ``put`` requests in
flight; each needs a row checked and a row written. ``Coalescer`` runs the
first call at once and gathers every call that arrives while a run is busy
into the next run, so a burst costs a few statements instead of one per call,
and a lone call waits for nothing. Each caller gets its own result (or the
run's exception) only when the statement that carries it has finished.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await c(item)`` is ``(await run_many([item, ...]))[i]`` for the batch it joined."""

    def __init__(self, run_many: Callable[[list[T]], Awaitable[Sequence[R]]], max_items: int = 2000) -> None:
        self._run_many = run_many
        self._max = max_items
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                batch = [(item, f) for item, f in batch if not f.done()]  # callers that gave up
                if not batch:
                    continue
                try:
                    results = await self._run_many([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise ValueError(f"{len(results)} results for {len(batch)} calls")
                except Exception as e:  # every caller of this run sees the failure
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(e)
                    continue
                for (_, f), result in zip(batch, results, strict=True):
                    if not f.done():
                        f.set_result(result)
        except asyncio.CancelledError:  # shutting down: nobody waits forever
            for _, f in [*batch, *self._pending]:
                f.cancel()
            self._pending = []
            raise
        finally:
            self._task = None
