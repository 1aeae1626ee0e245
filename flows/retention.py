"""Retention: Prefect's database holds crawlcoin's finished flow runs for `prefect_retention_seconds`, no longer.

Every dispatch run of every order, every activate run and every reconcile run leaves a flow run row
with its state rows (and logs, when logging to the API is on) in Prefect's database; at 1,000 orders
dispatched every 10 minutes that is 144,000 runs a day, and Prefect's scheduler and UI queries slow
down as those tables grow. Prefect's own `db_vacuum` service keeps them 90 days by default. This pass
deletes crawlcoin's runs (tag `crawlcoin`) that finished (Completed, Failed, Cancelled, Crashed)
more than the retention period ago, 50 at a time through `/flow_runs/bulk_delete`: their state
rows go with them (cascade) and Prefect deletes their logs in the background. Scheduled, pending
and running runs, and deployments, are never touched. Events are not persisted at all (the event
persister is off, see `cli/embedded.py`).

The crawlcoin worker runs the pass every `retention_interval` under a Valkey lock (one
worker at a time), and the `retention` flow runs the same function. Deleting is idempotent: a
worker killed half-way leaves runs that the next pass deletes.
"""

from datetime import UTC, datetime, timedelta

from prefect import flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from redis.asyncio import Redis

from core.settings import Settings
from flows.context import FlowContext, open_flow_context

RETENTION_LOCK = "crawlcoin:lock:prefect-retention"
RETENTION_INTERVAL_SECONDS = 300.0
BULK = 50  # Prefect's limit per bulk delete
MAX_PER_PASS = 20_000
FINISHED = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]


def retention_interval(settings: Settings) -> float:
    """How often each worker runs the pass: every `RETENTION_INTERVAL_SECONDS`, or twice per retention period
    if that is shorter — so a run is kept at most retention + interval."""
    return min(RETENTION_INTERVAL_SECONDS, max(1.0, settings.prefect_retention_seconds / 2))


def finished_before(cutoff: datetime, tag: str = "crawlcoin") -> FlowRunFilter:
    return FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]),
                         state=FlowRunFilterState(type=FlowRunFilterStateType(any_=FINISHED)),
                         end_time=FlowRunFilterEndTime(before_=cutoff))


async def prune_finished_runs(client: PrefectClient, redis: Redis, retention_seconds: float,
                              now: datetime | None = None, tag: str = "crawlcoin") -> int:
    """Delete crawlcoin's flow runs (`tag`) that finished more than `retention_seconds` ago; returns how many."""
    lock = redis.lock(RETENTION_LOCK, timeout=120, blocking=False)
    if not await lock.acquire():
        return 0
    try:
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=retention_seconds)
        body = {"flow_runs": finished_before(cutoff, tag).model_dump(mode="json", exclude_unset=True), "limit": BULK}
        deleted = 0
        while deleted < MAX_PER_PASS:
            response = await client.request("POST", "/flow_runs/bulk_delete", json=body)  # type: ignore[arg-type]
            batch = len(response.json()["deleted"])
            deleted += batch
            await lock.extend(120, replace_ttl=True)
            if batch < BULK:
                break
        return deleted
    finally:
        await lock.release()


async def run_retention(ctx: FlowContext) -> str:
    """The retention flow's work, wherever it runs."""
    deleted = await prune_finished_runs(ctx.sync.client, ctx.redis, ctx.settings.prefect_retention_seconds)
    return f"deleted {deleted} finished flow run(s) older than {ctx.settings.prefect_retention_seconds:g} s"


@flow(name="retention", log_prints=True, retries=0)
async def retention() -> str:
    """Delete crawlcoin's flow runs that finished longer ago than the retention period."""
    async with open_flow_context(Settings()) as ctx:
        summary = await run_retention(ctx)
    print(summary)
    return summary
