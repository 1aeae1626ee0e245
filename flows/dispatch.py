"""The dispatch flow of one order: claim the repetitions due soon and queue their jobs."""

import asyncio
from datetime import UTC, datetime

from prefect import flow, runtime

from core.queue import wake_sync
from core.settings import Settings
from flows.claim import Dispatched, dispatch_order
from flows.context import FlowContext, open_flow_context

__all__ = ["Dispatched", "dispatch", "dispatch_order", "run_dispatch"]


async def run_dispatch(ctx: FlowContext, order_id: str, flow_run_id: str) -> str:
    """The dispatch flow's work, wherever it runs: claim and queue, then have the sync path create the
    order's next dispatch run (or end its deployment), at once."""
    result = await dispatch_order(ctx.store, ctx.queue, ctx.settings, order_id, flow_run_id)
    await asyncio.to_thread(ctx.store.request_sync, order_id, datetime.now(UTC))
    await wake_sync(ctx.redis)
    return result.summary()


@flow(name="dispatch", log_prints=True, retries=0)
async def dispatch(order_id: str) -> str:
    """Claim and queue the repetitions of one order that fall due before its next dispatch run."""
    async with open_flow_context(Settings()) as ctx:
        summary = await run_dispatch(ctx, order_id, str(runtime.flow_run.id))
    print(summary)
    return summary
