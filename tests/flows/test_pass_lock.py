"""A pass whose lock expired under it (a slow Prefect server) finishes quietly instead of reporting an outage."""

import asyncio
import logging

import pytest
from redis.asyncio import Redis

from flows.prefect_sync import SYNC_LOCK, release


def test_a_lock_that_expired_under_a_slow_pass_is_released_with_a_warning_not_an_error(
        valkey_url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        redis = Redis.from_url(valkey_url)
        try:
            lock = redis.lock(SYNC_LOCK, timeout=0.2)
            assert await lock.acquire()
            await asyncio.sleep(0.5)  # the pass outlives its lock; another one takes it meanwhile
            other = redis.lock(SYNC_LOCK, timeout=5)
            assert await other.acquire(blocking=False)
            with caplog.at_level(logging.WARNING, logger="crawlcoin.prefect_sync"):
                await release(lock, "sync")
            assert await redis.get(SYNC_LOCK) is not None, "the other pass keeps its lock"
            await release(other, "sync")
            assert await redis.get(SYNC_LOCK) is None
        finally:
            await redis.aclose()

    asyncio.run(go())
    assert "the sync pass held its lock longer than 30 s" in caplog.text
