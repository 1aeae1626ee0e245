"""The reconcile flow: finish what crashed processes left half done, queue again the jobs Valkey does not hold,
then bring Prefect in line with the store."""

import asyncio

from prefect import flow

from core.settings import Settings
from flows.context import FlowContext, open_flow_context
from flows.requeue import requeue_lost


async def run_reconcile(ctx: FlowContext) -> str:
    """The reconcile flow's work, wherever it runs."""
    recovered = await asyncio.to_thread(ctx.store.recover_pending)  # operations a crashed process left half done
    requeued = await requeue_lost(ctx.store, ctx.queue, ctx.redis)  # jobs claimed that Valkey does not hold
    synced = await ctx.sync.sync_pending(ctx.redis)
    summary = f"synced {synced} order(s)"
    if recovered:
        summary += f"; finished {recovered} interrupted store operation(s)"
    if requeued:
        summary += f"; {requeued.summary()}"
    return summary


@flow(name="reconcile", log_prints=True, retries=0)
async def reconcile() -> str:
    """Apply every pending order change (create, pause, resume, cancel, complete) to Prefect."""
    async with open_flow_context(Settings()) as ctx:
        summary = await run_reconcile(ctx)
    print(summary)
    return summary
