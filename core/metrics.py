"""The Prometheus metrics every crawlcoin server exposes at `/metrics`, defined once.

Each process registers all of them in prometheus-client's default registry and serves the
ones it moves (the others read 0). Labels are few and bounded — an outcome, a lease end, a
backend — never an order, a miner or a URL. The hot path only increments: a counter or a
histogram observation per job, no I/O; figures that live in Valkey or the store (queue depth,
due backlog, pending sync requests) are read when Prometheus scrapes, by `refresh_queue` and
`refresh_sync_backlog`, on the API.
"""

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis

if TYPE_CHECKING:
    from core.protocol.mining import ResultAck
    from core.storage.interface import Store

LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds: from a twentieth of a second (the releaser's precision) up to an hour."""
LATE_AFTER_SECONDS = 60.0
"""A job still waiting in the due queue this long after its due time makes its order late."""
LATE_SCAN_LIMIT = 10_000
"""Most overdue queue entries read per scrape to count the late orders (the count stops there)."""
STORED = frozenset({"paid", "refunded"})
"""Outcomes that store a result the customer receives (the lateness histogram counts these)."""
SYNC_SCAN_LIMIT = 10_000
"""Most pending sync requests counted per scrape."""

# --- mining server ---------------------------------------------------------------------------
JOBS_FINISHED = Counter(
    "crawlcoin_jobs_finished",
    "Jobs whose result or failed attempt the mining server wrote, by outcome "
    "(paid, refunded, failed: settled; retry: the job goes back; duplicate, closed, unknown: nothing changed).",
    ["outcome"],
)
COINS_PAID = Counter("crawlcoin_coins_paid", "Coins paid to miners for stored results.")
STORE_LATENESS = Histogram(
    "crawlcoin_store_lateness_seconds",
    "From a job's due time to its result being stored and paid.",
    buckets=LATENESS_BUCKETS,
)
LEASES_OUTSTANDING = Gauge("crawlcoin_leases_outstanding", "Jobs leased to a miner and not yet returned.")
LEASES_EXPIRED = Counter("crawlcoin_leases_expired", "Leases that ran out before their miner returned the job.")
LEASES_RECLAIMED = Counter(
    "crawlcoin_leases_reclaimed", "Jobs taken over from a mining server that stopped renewing them."
)
MINERS_CONNECTED = Gauge("crawlcoin_miners_connected", "Miners connected that announced their policy.")
CHECKS_DECIDED = Counter(
    "crawlcoin_checks_decided", "Held results decided by their check, by the validation delivered.", ["validation"])
RESULTS_OUTVOTED = Counter(
    "crawlcoin_results_outvoted", "Fetches outvoted by two other miners' agreeing fetches (a strike each).")

# --- result server ---------------------------------------------------------------------------
RESULTS_DELIVERED = Counter(
    "crawlcoin_results_delivered", "Results a result client acknowledged (written to its disk)."
)
RESULT_CLIENTS_CONNECTED = Gauge("crawlcoin_result_clients_connected", "Result clients connected.")
WEBHOOK_ATTEMPTS = Counter(
    "crawlcoin_webhook_attempts",
    "Webhook requests sent, by outcome (delivered: answered 2xx; retry: to be sent again; failed: given up).",
    ["outcome"],
)
WEBHOOK_LATENESS = Histogram(
    "crawlcoin_webhook_delivery_seconds",
    "From a webhook notification being stored to its endpoint answering 2xx.",
    buckets=LATENESS_BUCKETS,
)

# --- worker (releaser) -----------------------------------------------------------------------
JOBS_RELEASED = Counter("crawlcoin_jobs_released", "Jobs moved from the due queue onto the job stream.")
RELEASE_LATENESS = Histogram(
    "crawlcoin_release_lateness_seconds",
    "From a job's due time to its release onto the job stream.",
    buckets=LATENESS_BUCKETS,
)

# --- worker (lateness check) ------------------------------------------------------------------
LATENESS_NOTICES = Counter(
    "crawlcoin_lateness_notices",
    "Lateness notices to the operator's alert channel, by kind (late, recovered) and outcome (sent, failed).",
    ["kind", "outcome"],
)

# --- API (read from Valkey and the store at scrape time) ----------------------------------------
QUEUE_JOBS = Gauge("crawlcoin_queue_jobs", "Jobs waiting in the due queue, due or not.")
QUEUE_DUE_JOBS = Gauge("crawlcoin_queue_due_jobs", "Jobs in the due queue whose due time has passed (backlog).")
QUEUE_OLDEST_DUE_SECONDS = Gauge(
    "crawlcoin_queue_oldest_due_seconds", "How long ago the oldest job still in the due queue was due (0: none is)."
)
ORDERS_QUEUED = Gauge(
    "crawlcoin_orders_queued", f"Orders with a job in the due queue (counted over the {LATE_SCAN_LIMIT} next due)."
)
ORDERS_LATE = Gauge(
    "crawlcoin_orders_late",
    "Orders running late: in a late episode of the workers' lateness check (a repetition not delivered "
    f"late_after_seconds after its due time), or with a job still in the due queue {LATE_AFTER_SECONDS:.0f} s after "
    f"its due time (counted over the {LATE_SCAN_LIMIT} oldest).",
)
SYNC_REQUESTS_PENDING = Gauge(
    "crawlcoin_sync_requests_pending", f"Order changes not yet applied to Prefect (counted up to {SYNC_SCAN_LIMIT})."
)

# --- every service ---------------------------------------------------------------------------
BACKEND_ERRORS = Counter(
    "crawlcoin_backend_errors", "Failed calls to a dependency (Valkey, the store, Prefect).", ["backend"]
)


def backend_label(dependency: str) -> str:
    """'the store' → 'store', 'Prefect or Valkey' → 'prefect_or_valkey'."""
    return dependency.lower().removeprefix("the ").replace(" ", "_")


def lateness(due_at: datetime | float, now: float | None = None) -> float:
    """Seconds since `due_at` (a datetime or a Unix time), never below 0."""
    due = due_at.timestamp() if isinstance(due_at, datetime) else due_at
    return max(0.0, (time.time() if now is None else now) - due)


_finished: dict[str, Counter] = {}


def job_finished(ack: "ResultAck", due_at: datetime) -> None:
    """The mining server answered a result or counted a failed attempt (`ack` is what the writer said)."""
    outcome = ack.outcome if ack.ok and ack.outcome else "not_stored"
    counter = _finished.get(outcome)
    if counter is None:  # labels() takes a lock and builds a key: once per outcome, not per job
        counter = _finished[outcome] = JOBS_FINISHED.labels(outcome=outcome)
    counter.inc()
    if ack.coins:
        COINS_PAID.inc(ack.coins)
    if outcome in STORED:
        STORE_LATENESS.observe(lateness(due_at))


def check_decided(validation: str, outvoted: int) -> None:
    """A check was decided: the delivered result's validation, and how many fetches it outvoted."""
    CHECKS_DECIDED.labels(validation=validation).inc()
    if outvoted:
        RESULTS_OUTVOTED.inc(outvoted)


def job_finished_when_done(done: "asyncio.Future[ResultAck]", due_at: datetime) -> None:
    """Count `job_finished` once the writer answers for a job nobody awaits (a lease that ended)."""

    def count(f: "asyncio.Future[ResultAck]") -> None:
        if not f.cancelled() and f.exception() is None:
            job_finished(f.result(), due_at)

    done.add_done_callback(count)


def observe_released(due_scores: list[float], now: float) -> None:
    """The releaser moved jobs due at these Unix times onto the stream at `now`."""
    if not due_scores:
        return
    JOBS_RELEASED.inc(len(due_scores))
    for due in due_scores:
        RELEASE_LATENESS.observe(max(0.0, now - due))


def order_of(job_key: bytes | str) -> str:
    key = job_key.decode() if isinstance(job_key, bytes) else job_key
    return key.rsplit(":", 1)[0]


async def refresh_queue(redis: Redis, now: float | None = None) -> None:
    """Set the due-queue gauges and the late orders from Valkey: one round trip, two bounded ranges and the late
    episodes of the lateness check."""
    from core.lateness import EPISODES, Episode
    from core.queue import DUE  # the queue imports this module for its counters

    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    pipe.zcard(DUE)
    pipe.zcount(DUE, "-inf", now)
    pipe.zrange(DUE, 0, 0, withscores=True)
    pipe.zrangebyscore(DUE, "-inf", now - LATE_AFTER_SECONDS, start=0, num=LATE_SCAN_LIMIT)
    pipe.zrange(DUE, 0, LATE_SCAN_LIMIT - 1)
    pipe.hvals(EPISODES)
    total, due, head, late, upcoming, episodes = await pipe.execute()
    QUEUE_JOBS.set(total)
    QUEUE_DUE_JOBS.set(due)
    QUEUE_OLDEST_DUE_SECONDS.set(lateness(head[0][1], now) if head else 0.0)
    running_late = [Episode.model_validate_json(e) for e in episodes]
    ORDERS_LATE.set(len({order_of(k) for k in late} | {e.order_id for e in running_late if e.recovered_at is None}))
    ORDERS_QUEUED.set(len({order_of(k) for k in upcoming}))


def refresh_sync_backlog(store: "Store") -> None:
    """Set the pending sync requests from the store (blocking: call it in a thread)."""
    SYNC_REQUESTS_PENDING.set(len(store.pending_syncs(SYNC_SCAN_LIMIT, datetime.now(UTC))))


def exposition() -> tuple[bytes, str]:
    """The body and content type of a `/metrics` answer."""
    return generate_latest(), CONTENT_TYPE_LATEST
