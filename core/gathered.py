"""A bulk call shared by the coroutines that make it at about the same time.

The first caller's call goes at once, alone; what others ask for while it runs goes together in the
next call. An idle process calls as soon as asked; a busy one makes fewer, larger calls, the more so
the busier it is. A call that fails fails for each of its callers alike. The result server gathers
its deliveries' store calls this way (`results.server.gather`), and its webhook sender the attempts it logs.
"""

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from anyio import to_thread

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Gathered(Generic[K, V]):
    """One bulk call (keys → what exists of them), shared by the coroutines that ask while it runs."""

    def __init__(self, call: Callable[[list[K]], dict[K, V]]) -> None:
        self._call = call
        self._asked: list[tuple[list[K], asyncio.Future[dict[K, V]]]] = []
        self._reading: asyncio.Task[None] | None = None

    async def get(self, keys: list[K]) -> dict[K, V]:
        """What exists of `keys`."""
        answer: asyncio.Future[dict[K, V]] = asyncio.get_running_loop().create_future()
        self._asked.append((keys, answer))
        if self._reading is None:
            self._reading = asyncio.create_task(self._call_asked())
        return await answer

    async def _call_asked(self) -> None:
        try:
            while self._asked:
                asked, self._asked = self._asked, []
                keys = list(dict.fromkeys(k for some, _ in asked for k in some))
                try:
                    found = await to_thread.run_sync(self._call, keys)
                except Exception as e:
                    for _, answer in asked:
                        if not answer.done():
                            answer.set_exception(e)
                    continue
                for some, answer in asked:
                    if not answer.done():  # an asker cancelled meanwhile has none
                        answer.set_result({k: found[k] for k in some if k in found})
        finally:
            self._reading = None
