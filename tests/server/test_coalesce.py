"""Group commit (server.coalesce): concurrent calls share runs, each caller
gets its own result or the run's error, and a caller that gives up does not
stall the others."""

from __future__ import annotations

import asyncio

import pytest

from server.coalesce import Coalescer


async def test_calls_arriving_during_a_run_share_the_next_run() -> None:
    runs: list[list[int]] = []
    gate = asyncio.Event()

    async def run_many(items: list[int]) -> list[int]:
        runs.append(list(items))
        if len(runs) == 1:
            await gate.wait()  # the first run is busy while the others arrive
        return [i * 10 for i in items]

    c: Coalescer[int, int] = Coalescer(run_many)
    first = asyncio.create_task(c(1))
    await asyncio.sleep(0)  # (lets the first run start)
    rest = [asyncio.create_task(c(i)) for i in range(2, 7)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40, 50, 60]
    assert runs == [[1], [2, 3, 4, 5, 6]]


async def test_a_failed_run_fails_each_of_its_callers_and_the_next_run_goes_on() -> None:
    calls = 0

    async def run_many(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if "bad" in items:
            raise RuntimeError("the statement failed")
        return [s.upper() for s in items]

    c: Coalescer[str, str] = Coalescer(run_many)
    results = await asyncio.gather(c("bad"), c("x"), return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]  # one run: both see its error
    assert await c("ok") == "OK"  # and the coalescer still works
    assert calls == 2


async def test_a_caller_that_gives_up_does_not_block_the_others() -> None:
    gate = asyncio.Event()

    async def run_many(items: list[int]) -> list[int]:
        await gate.wait()
        return items

    c: Coalescer[int, int] = Coalescer(run_many, max_items=2)
    waiting = [asyncio.create_task(c(i)) for i in range(5)]
    await asyncio.sleep(0)
    waiting[3].cancel()
    gate.set()
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert done[:3] == [0, 1, 2] and done[4] == 4
    assert isinstance(done[3], asyncio.CancelledError)


async def test_results_must_match_the_items() -> None:
    async def run_many(items: list[int]) -> list[int]:
        return []  # a bug in a run_many: every caller hears of it, none hangs

    c: Coalescer[int, int] = Coalescer(run_many)
    with pytest.raises(ValueError):
        await asyncio.wait_for(c(1), 5)
