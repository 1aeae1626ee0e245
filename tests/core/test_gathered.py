"""Gathered store calls: what callers ask for while a call runs goes together in the next; a failure reaches
each of the callers it concerns, and the next call is made afresh."""

import asyncio
import threading

import pytest

from core.gathered import Gathered


def test_calls_made_while_one_runs_go_together_and_each_caller_gets_its_own_keys() -> None:
    calls: list[list[int]] = []
    first_started, release = threading.Event(), threading.Event()

    def square(keys: list[int]) -> dict[int, int]:
        calls.append(keys)
        if len(calls) == 1:
            first_started.set()
            release.wait(10)
        return {k: k * k for k in keys if k != 13}  # 13 does not exist

    async def scenario() -> list[dict[int, int]]:
        gathered: Gathered[int, int] = Gathered(square)
        first = asyncio.create_task(gathered.get([1, 2]))
        await asyncio.to_thread(first_started.wait, 10)
        others = [asyncio.create_task(gathered.get(keys)) for keys in ([3, 13], [2, 4], [5])]
        await asyncio.sleep(0.1)
        release.set()
        return await asyncio.gather(first, *others)

    assert asyncio.run(scenario()) == [{1: 1, 2: 4}, {3: 9}, {2: 4, 4: 16}, {5: 25}]
    assert calls == [[1, 2], [3, 13, 2, 4, 5]]


def test_a_failed_call_fails_for_each_of_its_callers_and_the_next_is_made_afresh() -> None:
    failing = True

    def read(keys: list[str]) -> dict[str, str]:
        if failing:
            raise ConnectionError("the store is down")
        return {k: k.upper() for k in keys}

    async def scenario() -> None:
        nonlocal failing
        gathered: Gathered[str, str] = Gathered(read)
        outcomes = await asyncio.gather(gathered.get(["a"]), gathered.get(["b"]), return_exceptions=True)
        assert all(isinstance(o, ConnectionError) for o in outcomes)
        failing = False
        assert await gathered.get(["c"]) == {"c": "C"}

    asyncio.run(scenario())


def test_a_caller_cancelled_while_waiting_leaves_the_others_their_answers() -> None:
    started = threading.Event()

    def slow(keys: list[int]) -> dict[int, int]:
        started.set()
        threading.Event().wait(0.3)
        return dict.fromkeys(keys, 0)

    async def scenario() -> None:
        gathered: Gathered[int, int] = Gathered(slow)
        gone, kept = asyncio.create_task(gathered.get([1])), asyncio.create_task(gathered.get([2]))
        await asyncio.to_thread(started.wait, 10)
        gone.cancel()
        assert await kept == {2: 0}
        with pytest.raises(asyncio.CancelledError):
            await gone

    asyncio.run(scenario())
