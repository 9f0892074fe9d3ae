"""Concurrent calls share runs (penguins.coalesce): one at a time, a late caller gets a run that starts after it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from penguins.coalesce import Coalesced


def test_concurrent_calls_share_runs_and_a_late_one_gets_a_fresh_run():
    calls = []
    running = threading.Event()

    def scan() -> int:
        running.set()
        calls.append(threading.get_ident())
        time.sleep(0.2)
        return len(calls)

    async def storm() -> tuple[list[int], int]:
        coalesced = Coalesced(scan)
        first = [asyncio.create_task(coalesced()) for _ in range(50)]
        await asyncio.to_thread(running.wait)  # the first run is under way
        late = [asyncio.create_task(coalesced()) for _ in range(50)]
        results = await asyncio.gather(*first, *late)
        return results, coalesced.runs

    results, runs = asyncio.run(storm())
    assert runs == 2 == len(calls)
    assert results[:50] == [1] * 50 and results[50:] == [2] * 50  # the late ones saw a run that began after them
    assert threading.main_thread().ident not in calls


def test_a_failing_run_fails_its_callers_and_the_next_run_is_fresh():
    outcomes = iter([RuntimeError("store gone"), 7])

    def scan() -> int:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def twice() -> int:
        coalesced = Coalesced(scan)
        with pytest.raises(RuntimeError, match="store gone"):
            await coalesced()
        return await coalesced()

    assert asyncio.run(twice()) == 7
