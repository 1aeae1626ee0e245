"""What crawlcoin keeps in Prefect, by name and shape: the client, the work pool, an order's deployment."""

import hashlib
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectAlreadyExists

from core import schedules
from core.errors import ServiceUnavailable
from core.settings import Settings
from core.storage import Order


def prefect_client(settings: Settings) -> PrefectClient:
    """A client for the configured Prefect server (PREFECT_API_URL), to use as `async with`.

    Without a URL Prefect would start a throw-away in-process server; refuse instead.
    """
    if not settings.prefect_api_url:
        raise ServiceUnavailable("no Prefect server configured: set PREFECT_API_URL")
    return PrefectClient(api=settings.prefect_api_url)


async def ensure_pool(client: PrefectClient, name: str, stock_template: dict | None = None) -> None:
    """The `crawlcoin` work pool, created with an empty base job template.

    crawlcoin's worker runs flows in its own process and uses no job variables, and with a template
    Prefect's server validates every flow run and deployment it creates against the template's
    variables schema (py-spy on the server during bench/e2e.py: 40 % of its time creating a flow run). A
    pool created earlier with Prefect's stock template for this worker (`stock_template`, what a
    worker registers when it creates the pool) is emptied; one an operator customised is left as is.
    """
    try:
        await client.create_work_pool(WorkPoolCreate(name=name, type="crawlcoin"))
        return
    except ObjectAlreadyExists:
        pass
    pool = await client.read_work_pool(name)
    if stock_template is not None and pool.type == "crawlcoin" and pool.base_job_template == stock_template:
        await client.update_work_pool(name, WorkPoolUpdate(base_job_template={}))


def deployment_name(order_id: str) -> str:
    return f"order-{order_id}"


def first_run_at(settings: Settings, order: Order, next_due: datetime) -> datetime:
    """When the dispatch run covering the next due repetition should start: `dispatch_lead_seconds` before it,
    and earlier by a part of half the order's dispatch period fixed per order (`spread_seconds`)."""
    lead = settings.dispatch_lead_seconds + spread_seconds(order, settings)
    return (next_due - timedelta(seconds=lead)).astimezone(UTC)


def spread_seconds(order: Order, settings: Settings) -> float:
    """How much earlier than the lead the order's dispatch runs start: from 0 to half its dispatch period, fixed
    per order. Orders placed together fall due together; their dispatch runs, each claiming the same period
    from the next due repetition whenever it starts (`flows/claim.py`), are spread over half a period instead
    of all falling within the same minute (at 1,000 orders that band made the runs start up to minutes late)."""
    period = schedules.dispatch_period_seconds(order, settings.dispatch_window_seconds)
    fraction = int.from_bytes(hashlib.sha256(order.id.encode()).digest()[:4]) / 2**32
    return round(fraction * period / 2, 3)


def customer_schedule(order: Order) -> IntervalSchedule | CronSchedule:
    """The order's schedule as Prefect shows it (kept inactive: crawlcoin creates the dispatch runs)."""
    if order.every_seconds:
        return IntervalSchedule(interval=timedelta(seconds=order.every_seconds), anchor_date=order.start_at)
    return CronSchedule(cron=order.cron or "", timezone=order.timezone or "UTC")


def describe(order: Order) -> str:
    return (f"Order {order.id}: fetch {order.method} {order.url} {schedules.in_words(order)}. "
            "Each dispatch run queues the repetitions due before the next one and logs which; crawlcoin "
            "creates the runs itself, so the schedule shown here is the customer's, switched off in Prefect.")
