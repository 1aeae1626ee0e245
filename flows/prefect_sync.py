"""The one sync path from orders (the truth, in the store) to Prefect deployments.

Every order change that Prefect must learn about (created, paused, resumed, cancelled,
completed) writes a sync request into the store in the same transaction. `sync_pending`
works through those requests under a Valkey lock, so only one process at a time writes to
Prefect (Prefect on SQLite answers concurrent writes with 503s). Every crawlcoin worker calls
it when the API wakes it after a change (`core.queue.SYNC_WAKEUP`; placing an order never
waits on Prefect) and at least every `sync_interval_seconds`; a dispatch that completes an
order and the `reconcile` flow call it too — so a Prefect outage only delays it. Each sync is
idempotent: it makes Prefect match the order. The store is synchronous: its calls run in a
thread, off the event loop the worker's flow runs share.

- active, first repetitions due soon (new or resumed order) → activated first: before any deployment
  is written, the pass claims and queues the repetitions due within `activation_window_seconds`
  (plus the lead) of every such order pending, all together, recorded in Prefect as one `activate`
  flow run per batch (a run id of its own per order derives the claim, so a retried activation
  claims nothing twice). A burst of new orders thus gets its first jobs out within a second or two,
  however long Prefect then takes to write the deployments (measured with bench/e2e.py).
- active → deployment `order-<id>` of the dispatch flow, for as long as the order is active
  (also once every repetition is claimed). It shows the customer's schedule (description, and
  the schedule itself, switched off) and has no active schedule: this path creates each
  dispatch run, `lead` seconds before the order's next due repetition (now if that is past) —
  on activation, and after every dispatch run (which asks for it at once). Prefect's scheduler
  service thus never visits order deployments (with an RRule per order it did, every loop:
  see the README on scale). A timer `WATCHDOG_SECONDS` after each
  run's scheduled time checks that it claimed, and replaces it if its worker died first.
- paused → the order's not-yet-released jobs are withdrawn from the queue and go back to its
  counter; the deployment is paused.
- active with every repetition claimed → once the order's last job has left the queue and every
  repetition is settled (its escrow is empty: `rules.completable`) the order is completed —
  never with coins in escrow — and its deployment deleted.
- completed / cancelled → withdrawn jobs of a cancelled order are refunded; the deployment
  is deleted.
"""

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid5

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate, FlowRunCreate, LogCreate
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.states import Completed, Crashed, Running, Scheduled, to_state_create
from redis.asyncio import Redis
from redis.asyncio.lock import Lock
from redis.exceptions import LockNotOwnedError

from core.ledger import escrow_account
from core.queue import JobQueue
from core.schemas import OrderStatus
from core.settings import Settings
from core.storage import Order, Store, rules
from flows.claim import dispatch_order
from flows.prefect_objects import customer_schedule, deployment_name, describe, ensure_pool, first_run_at

log = logging.getLogger("crawlcoin.prefect_sync")

DISPATCH_FLOW = "dispatch"
ACTIVATE_FLOW = "activate"
ACTIVATE_BATCH = 1000  # pending orders looked at per activation
ACTIVATE_EVERY_SECONDS = 1.0  # while deployments are written, new orders are activated at least this often
DISPATCH_ENTRYPOINT = "flows/dispatch.py:dispatch"
RECONCILE_ENTRYPOINT = "flows/reconcile.py:reconcile"
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # deployments run their entrypoints from here
SYNC_LOCK = "crawlcoin:lock:prefect-sync"
RETRY_SECONDS = 3
LOCK_SECONDS = 30  # a holder that dies blocks other syncs at most this long
LOCK_WAIT_SECONDS = 10  # how long a pass waits for the holder before leaving it to the next one
WATCHDOG_SECONDS = 60  # a dispatch run that has not claimed this long after it was due is replaced
LOG_BATCH = 50  # log lines sent to Prefect per request
SETTLE_RECHECK_SECONDS = 5  # how often an order whose jobs are all out looks again whether they are settled


async def release(lock: Lock, work: str) -> None:
    """Release a pass's lock. One that expired meanwhile (a pass slowed past `LOCK_SECONDS` between two
    extensions, e.g. by an overloaded Prefect server) is no outage: the work it guards is idempotent, so a
    pass that started alongside did no harm. Said so, instead of failing a pass that did its work."""
    try:
        await lock.release()
    except LockNotOwnedError:
        log.warning("the %s pass held its lock longer than %d s between extensions; another pass may have run "
                    "alongside (harmless: each step is idempotent)", work, LOCK_SECONDS)


class PrefectSync:
    """Brings Prefect in line with the store, one order at a time."""

    def __init__(self, client: PrefectClient, store: Store, queue: JobQueue, settings: Settings) -> None:
        self.client = client
        self.store = store
        self.queue = queue
        self.settings = settings
        self._flow_id: UUID | None = None
        self._activate_flow_id: UUID | None = None
        self._activated: dict[str, tuple[str, str]] = {}  # order id → (activate run id, what it queued), until written
        self._logs: list[LogCreate] = []
        self._looked_at: dict[str, datetime] = {}  # sync requests `_activate_pending` has seen: order id → time
        self._pool_ready = False

    async def _dispatch_flow_id(self) -> UUID:
        if self._flow_id is None:
            self._flow_id = await self.client.create_flow_from_name(DISPATCH_FLOW)
        return self._flow_id

    async def _ensure_pool(self) -> None:
        if not self._pool_ready:
            await ensure_pool(self.client, self.settings.work_pool)
            self._pool_ready = True

    async def sync_order(self, order: Order, requested_at: datetime | None = None) -> datetime | None:
        """Make Prefect match the order; returns when to look at it again (a timer), if ever.

        `requested_at` tells a change of the order (requested when it changed: on or before its
        `updated_at`) from the timer this method set earlier (a watchdog on the next dispatch run)."""
        now = datetime.now(UTC)
        if order.status is OrderStatus.active:
            # A change is requested in the transaction that makes it (at its `updated_at`); the request a
            # dispatch run makes after claiming, and the watchdog, come later: those need no deployment write.
            change = requested_at is None or order.deployment_id is None or requested_at <= order.updated_at
            deployment_id = await self._write_deployment(order) if change else UUID(order.deployment_id or "")
            activated = self._activated.pop(order.id, None)
            if order.next_due_at is not None:
                run_at = await self._next_run(order, deployment_id, now, watchdog=not change, activated=activated)
                return run_at + timedelta(seconds=WATCHDOG_SECONDS)
            if activated is not None:  # no run to come that could say it
                await self._record_activation(order, deployment_id, *activated)
            # Every repetition claimed: the deployment stays (with no run to come) until the order is settled.
            waiting, last_due = await self.queue.queued_for(order.id)
            escrow = 0 if waiting else await asyncio.to_thread(self.store.get_balance, escrow_account(order.id))
            if waiting or not rules.completable(order, escrow):
                # Look again once the last job is due, or — jobs out with miners, or claimed but lost
                # by Valkey until the requeue pass queues them again — a little later.
                later = now + timedelta(seconds=SETTLE_RECHECK_SECONDS)
                return max(datetime.fromtimestamp(last_due, UTC) if last_due else later, now) + timedelta(seconds=1)
            if not await asyncio.to_thread(self.store.set_order_status, order.id, {OrderStatus.active},
                                           OrderStatus.completed):
                return now  # changed meanwhile (paused, cancelled): look again
            await self.queue.announce(order.id, OrderStatus.completed.value)
            await self._drop_deployment(order)
            return None
        if order.status is OrderStatus.paused:
            await asyncio.to_thread(self.store.unclaim, order.id, await self.queue.withdraw(order.id))
        elif order.status is OrderStatus.cancelled:
            await asyncio.to_thread(self.store.refund_repetitions, order.id, await self.queue.withdraw(order.id))
            await self.queue.announce(order.id, OrderStatus.cancelled.value)
        if order.status is OrderStatus.paused and order.deployment_id is not None:
            try:
                await self.client.pause_deployment(order.deployment_id)
            except ObjectNotFound:
                await asyncio.to_thread(self.store.set_deployment_id, order.id, None)
        elif order.status is not OrderStatus.paused:
            await self._drop_deployment(order)
        return None

    async def _drop_deployment(self, order: Order) -> None:
        if order.deployment_id is None:
            return
        try:
            await self.client.delete_deployment(UUID(order.deployment_id))
        except ObjectNotFound:
            pass
        await asyncio.to_thread(self.store.set_deployment_id, order.id, None)

    async def _write_deployment(self, order: Order) -> UUID:
        """Create (or update and resume) the order's deployment: it shows the customer's schedule, and has
        no active schedule of its own — crawlcoin creates each dispatch run itself (see `_next_run`), so
        Prefect's scheduler service never visits order deployments."""
        await self._ensure_pool()
        deployment_id = await self.client.create_deployment(
            flow_id=await self._dispatch_flow_id(),
            name=deployment_name(order.id),
            entrypoint=DISPATCH_ENTRYPOINT,
            path=str(PROJECT_ROOT),
            parameters={"order_id": order.id},
            work_pool_name=self.settings.work_pool,
            schedules=[DeploymentScheduleCreate(schedule=customer_schedule(order), active=False)],
            paused=False,
            tags=["crawlcoin", "order"],
            description=describe(order),
        )
        if order.deployment_id != str(deployment_id):
            await asyncio.to_thread(self.store.set_deployment_id, order.id, str(deployment_id))
        else:
            await self.client.resume_deployment(deployment_id)
        return deployment_id

    async def _record_activation(self, order: Order, deployment_id: UUID, activate_run: str, summary: str) -> None:
        """A finished run in the order's deployment saying what its activation queued, so that the
        deployment's history starts with its first repetitions (the `activate` run claimed them)."""
        run = await self.client.create_flow_run_from_deployment(
            deployment_id, name="activation", state=Completed(message=f"{summary} (activate run {activate_run})"),
            idempotency_key=f"activated:{order.id}:{activate_run}")
        self._logs.append(LogCreate(
            name="crawlcoin", level=logging.INFO, timestamp=datetime.now(UTC), flow_run_id=run.id,
            message=f"{summary}, claimed at activation by the `activate` flow run {activate_run}"))

    async def _flush_logs(self) -> None:
        """Send the log lines gathered for the runs this pass recorded, in one request."""
        if self._logs:
            logs, self._logs = self._logs, []
            await self.client.create_logs(logs)

    async def _next_run(self, order: Order, deployment_id: UUID, now: datetime, watchdog: bool,
                        activated: tuple[str, str] | None = None) -> datetime:
        """The dispatch run for the order's next due repetition, scheduled `lead` seconds before it
        (now if that is past); returns its scheduled time.

        After the order's activation (`activated`: the activate run's id, what it queued) the run's
        scheduled state and a log line on it say what the activation queued, so the deployment's
        history starts with the first repetitions without a run of its own for them.

        Its idempotency key is the order's claim state, so the pass after a dispatch run, a retried
        pass and the watchdog all find the same run. The watchdog (a timer `WATCHDOG_SECONDS` after
        the run was due) replaces a run that never started or whose worker died before it claimed
        (marking it Crashed), so an order's runs go on without Prefect's scheduler."""
        assert order.next_due_at is not None
        run_at = max(first_run_at(self.settings, order, order.next_due_at), now)
        key = f"dispatch:{order.id}:{order.next_due_at.isoformat()}:{order.updated_at.isoformat()}"
        message = f"activation {activated[1]} (activate run {activated[0]})" if activated else None
        run = await self.client.create_flow_run_from_deployment(
            deployment_id, state=Scheduled(scheduled_time=run_at, message=message), idempotency_key=key)
        if activated is not None:
            self._logs.append(LogCreate(
                name="crawlcoin", level=logging.INFO, timestamp=datetime.now(UTC), flow_run_id=run.id,
                message=f"before this run, the order's activation {activated[1]}: claimed by the `activate` flow "
                        f"run {activated[0]}"))
        due = run.expected_start_time or run_at
        if watchdog and run.state is not None and not run.state.is_scheduled() and \
                due + timedelta(seconds=WATCHDOG_SECONDS) <= now:
            log.warning("dispatch run %s of order %s did not claim (%s); starting another", run.id, order.id,
                        run.state.name)
            if not run.state.is_final():
                await self.client.set_flow_run_state(
                    run.id, Crashed(message="its worker stopped before it claimed; replaced"), force=True)
            await self.client.create_flow_run_from_deployment(
                deployment_id, state=Scheduled(scheduled_time=now), idempotency_key=f"{key}:again:{now.isoformat()}")
            return now
        return due

    def _needs_activation(self, order: Order, requested_at: datetime, now: datetime) -> bool:
        """A new or resumed order (a change, see `sync_order`) with repetitions due soon; an order whose
        deployment is written has its runs created by this path instead."""
        if order.status is not OrderStatus.active or order.next_due_at is None:
            return False
        if order.deployment_id is not None and requested_at > order.updated_at:
            return False
        soon = now + timedelta(seconds=self.settings.dispatch_lead_seconds + self.settings.activation_window_seconds)
        return order.next_due_at <= soon

    async def activate(self, orders: list[Order], lock: Lock | None = None) -> int:
        """Claim and queue the first repetitions of `orders` now, as one `activate` flow run; returns jobs queued.

        The run is created (Running) before anything is claimed, so every claim belongs to a run Prefect
        shows; its idempotency key makes a retried activation of the same order changes reuse it."""
        if not orders or not self.settings.activation_window_seconds:
            return 0
        if self._activate_flow_id is None:
            self._activate_flow_id = await self.client.create_flow_from_name(ACTIVATE_FLOW)
        key = "activate:" + ",".join(sorted(f"{o.id}@{o.updated_at.isoformat()}" for o in orders))
        create = FlowRunCreate(
            flow_id=self._activate_flow_id, name=f"activate-{len(orders)}-orders",
            parameters={"order_ids": [o.id for o in orders]}, tags=["crawlcoin", "activate"],
            state=to_state_create(Running()), idempotency_key=str(uuid5(UUID(int=0), key)),
        )
        response = await self.client.request("POST", "/flow_runs/", json=create.model_dump(mode="json",
                                                                                           exclude_unset=True))
        run = FlowRun.model_validate(response.json())
        queued = 0
        lines = []
        for i, order in enumerate(orders):
            claim_id = str(uuid5(run.id, order.id))  # one claim per order, derived from the run
            if lock is not None and i % 25 == 24:
                await lock.extend(LOCK_SECONDS, replace_ttl=True)
            try:
                result = await dispatch_order(self.store, self.queue, self.settings, order.id, claim_id,
                                              window_seconds=self.settings.activation_window_seconds, order=order)
                queued += len(result.queued)
                lines.append(f"order {order.id} {result.summary()}")
                if result.queued:
                    self._activated[order.id] = (str(run.id), result.summary())
            except Exception:  # its deployment's first run claims them instead
                log.warning("activation of order %s failed", order.id, exc_info=True)
        summary = f"queued the first {queued} job(s) of {len(orders)} order(s)"
        await self.client.create_logs([LogCreate(name="crawlcoin", level=logging.INFO, timestamp=datetime.now(UTC),
                                                 message=f"{summary}: {', '.join(lines)}", flow_run_id=run.id)])
        await self.client.set_flow_run_state(run.id, Completed(message=summary), force=True)
        return queued

    async def _activate_pending(self, lock: Lock) -> None:
        """Activate every pending order that needs it, looking at each sync request once."""
        now = datetime.now(UTC)
        pending = await asyncio.to_thread(self.store.pending_syncs, ACTIVATE_BATCH, now)
        new = [(order_id, at) for order_id, at in pending if self._looked_at.get(order_id) != at]
        self._looked_at = dict(pending)  # what is no longer pending is forgotten
        if not new:
            return
        orders = await asyncio.to_thread(lambda: [self.store.get_order(order_id) for order_id, _ in new])
        due = [o for o, (_, at) in zip(orders, new, strict=True)
               if o is not None and self._needs_activation(o, at, now)]
        if due:
            queued = await self.activate(due, lock)
            log.info("activated %d order(s): %d job(s) queued", len(due), queued)

    async def sync_pending(self, redis: Redis, batch: int = 100) -> int:
        """Work through the sync requests; returns orders synced.

        If another process holds the lock for a while (its own sync pass, which then finds this
        change too, or a requeue pass, which does not), this one waits for it rather than drop a
        wake-up: a change must never wait for the next sync interval because of a busy lock.
        """
        lock = redis.lock(SYNC_LOCK, timeout=LOCK_SECONDS, blocking_timeout=LOCK_WAIT_SECONDS)
        if not await lock.acquire():
            return 0
        done = failures = 0
        try:
            while True:
                pending = await asyncio.to_thread(self.store.pending_syncs, batch, datetime.now(UTC))
                if not pending:
                    await self._flush_logs()
                    return done
                await self._activate_pending(lock)
                activated_at = time.monotonic()
                for order_id, requested_at in pending:
                    if time.monotonic() - activated_at >= ACTIVATE_EVERY_SECONDS:  # orders placed meanwhile
                        await self._activate_pending(lock)
                        activated_at = time.monotonic()
                    order = await asyncio.to_thread(self.store.get_order, order_id)
                    again = None
                    try:
                        if order is not None:
                            again = await self.sync_order(order, requested_at)
                    except Exception:
                        # Retry this order a little later; give up the pass if Prefect seems down.
                        await asyncio.to_thread(self.store.request_sync, order_id,
                                                datetime.now(UTC) + timedelta(seconds=RETRY_SECONDS))
                        failures += 1
                        if failures >= 3:
                            raise
                        log.warning("sync of order %s failed; retrying in %s s", order_id, RETRY_SECONDS,
                                    exc_info=True)
                        continue
                    await asyncio.to_thread(self.store.finish_sync, order_id, requested_at, again)
                    done += 1
                    if len(self._logs) >= LOG_BATCH:
                        await self._flush_logs()
                    await lock.extend(LOCK_SECONDS, replace_ttl=True)
        finally:
            await release(lock, "sync")
