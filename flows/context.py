"""What a flow run works with: the store, Valkey, the job queue, the Prefect sync, the settings.

The crawlcoin worker opens one context for all the runs it executes; a `@flow` body run by any
other Prefect worker opens one per run. Either way the flow's work is the same function
(`run_dispatch`, `run_reconcile`), called with the context.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from prefect.client.orchestration import PrefectClient
from redis.asyncio import Redis

from core.queue import JobQueue
from core.settings import Settings
from core.storage import Store, open_store
from core.valkey import valkey
from flows.prefect_objects import prefect_client
from flows.prefect_sync import PrefectSync


@dataclass
class FlowContext:
    store: Store
    redis: Redis
    queue: JobQueue
    sync: PrefectSync
    settings: Settings


@asynccontextmanager
async def open_flow_context(settings: Settings, client: PrefectClient | None = None) -> AsyncIterator[FlowContext]:
    """Open the store and Valkey (and a Prefect client unless one is given); close them at the end."""
    async with AsyncExitStack() as stack:
        store = await asyncio.to_thread(open_store, settings.resolved_store_url)
        stack.push_async_callback(asyncio.to_thread, store.close)
        redis = valkey(settings.resolved_redis_url)
        stack.push_async_callback(redis.aclose)
        if client is None:
            client = await stack.enter_async_context(prefect_client(settings))
        queue = JobQueue(redis)
        yield FlowContext(store, redis, queue, PrefectSync(client, store, queue, settings), settings)
