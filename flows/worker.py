"""The crawlcoin Prefect worker: runs dispatch and reconcile flow runs inside its own process.

A stock process worker starts a new Python for every flow run (measured here: 5.8 CPU-s and
0.27 runs/s); this worker polls and claims runs through Prefect's own worker machinery (the
Pending proposal is atomic, so any number of workers on any number of machines share the
work) and then executes the run in-process, reporting Running and Completed/Failed itself.
It runs the same function per flow as the `@flow` bodies (`run_dispatch`, `run_reconcile`)
with one `FlowContext` (store, Valkey, Prefect client) kept open across runs. With
`worker_metrics_port` set it serves its Prometheus metrics (jobs released, release lateness,
dependency errors) at `/metrics` on that port. Each worker also
releases due jobs from the queue onto the job stream, applies pending order changes to Prefect
as soon as the API announces one (`SYNC_WAKEUP`) and at least every `sync_interval_seconds`,
finishes store operations a crashed process left half done every `recover_interval_seconds`,
deletes crawlcoin's finished flow runs past their retention from Prefect (`flows/retention.py`),
tells the operator when an order runs late and when it is on time again (`flows/lateness.py`),
and queues again every few seconds the jobs the store claimed but Valkey does not hold
(`flows/requeue.py`) — so none of them depends on a single process, nor on the API.
"""

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

import anyio.abc
from prefect import get_client
from prefect.client.schemas.actions import LogCreate
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Abort
from prefect.states import Completed, Failed, Running
from prefect.utilities.engine import propose_state
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from prometheus_client import start_http_server
from redis.asyncio.client import PubSub

from core.errors import CrawlcoinError
from core.outage import outage
from core.queue import SYNC_WAKEUP, run_releaser
from core.settings import Settings
from flows.context import FlowContext, open_flow_context
from flows.dispatch import run_dispatch
from flows.lateness import Alerts, check_lateness
from flows.prefect_objects import ensure_pool
from flows.reconcile import run_reconcile
from flows.requeue import INTERVAL_SECONDS as REQUEUE_INTERVAL_SECONDS
from flows.requeue import requeue_lost
from flows.retention import retention_interval, run_retention

log = logging.getLogger("crawlcoin.worker")

FLOWS: dict[str, Callable[[FlowContext, FlowRun], Awaitable[str]]] = {
    "dispatch": lambda ctx, run: run_dispatch(ctx, str(run.parameters["order_id"]), str(run.id)),
    "reconcile": lambda ctx, run: run_reconcile(ctx),
    "retention": lambda ctx, run: run_retention(ctx),
}


class CrawlcoinWorkerResult(BaseWorkerResult):
    """Outcome of one in-process flow run."""


class _Configuration(BaseJobConfiguration):
    """Prefect's base job configuration; a pool without a template (crawlcoin's) gets the stock one's values."""

    @classmethod
    async def from_template_and_values(cls, base_job_template: dict[str, Any], values: dict[str, Any],
                                       client: Any = None) -> "_Configuration":
        return await super().from_template_and_values(base_job_template or CrawlcoinWorker.stock_template(),
                                                      values, client=client)


_NO_JOB_CONFIGURATION = BaseJobConfiguration()
"""What `CrawlcoinWorker.run` is given: its runs take no job variables."""


class CrawlcoinWorker(BaseWorker[BaseJobConfiguration, BaseVariables, CrawlcoinWorkerResult]):
    type = "crawlcoin"
    job_configuration = _Configuration
    job_configuration_variables = BaseVariables
    _description = "Runs crawlcoin's dispatch and reconcile flows inside the worker process."

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        """None: the pool keeps an empty template (`prefect_objects.ensure_pool`), which Prefect's worker would
        otherwise fill in with the stock one, and its server then validates every flow run against."""
        return {}

    @classmethod
    def stock_template(cls) -> dict[str, Any]:
        """The template Prefect's worker machinery makes for this worker type."""
        return super().get_default_base_job_template()

    def __init__(self, *args: Any, settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings or Settings()
        self._resources = AsyncExitStack()
        self._ctx: FlowContext | None = None
        self._background: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._flow_names: dict[Any, str] = {}
        self._metrics_server: WSGIServer | None = None
        self._alerts = Alerts(self.settings.alert_urls)  # a URL apprise cannot use stops the worker here

    # --- lifecycle -------------------------------------------------------------------

    async def setup(self) -> None:
        port = self.settings.worker_metrics_port
        if port:
            try:
                self._metrics_server, _ = start_http_server(port, addr=self.settings.host)
            except OSError as e:
                raise CrawlcoinError(f"the worker cannot serve metrics on {self.settings.host}:{port} ({e}); "
                                     "set CRAWLCOIN_WORKER_METRICS_PORT to a free port, or 0 for none") from None
        async with get_client() as client:  # before Prefect's worker would create it with the stock template
            await ensure_pool(client, self._work_pool_name, self.stock_template())
        await super().setup()
        self._ctx = await self._resources.enter_async_context(open_flow_context(self.settings, self.client))
        self._background = [
            asyncio.create_task(run_releaser(self._ctx.queue, self._stop), name="releaser"),
            asyncio.create_task(self._sync_loop(self._ctx), name="prefect-sync"),
            asyncio.create_task(self._recover_loop(self._ctx), name="store-recovery"),
            asyncio.create_task(self._requeue_loop(self._ctx), name="requeue"),
            asyncio.create_task(self._retention_loop(self._ctx), name="retention"),
            asyncio.create_task(self._lateness_loop(self._ctx), name="lateness"),
        ]

    async def teardown(self, *exc_info: Any) -> None:
        self._stop.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._resources.aclose()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        await super().teardown(*exc_info)

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass
        return self._stop.is_set()

    async def _sync_loop(self, ctx: FlowContext) -> None:
        wakeups: PubSub | None = None
        while not self._stop.is_set():
            wakeups = await self._subscribed(ctx, wakeups)
            try:
                await ctx.sync.sync_pending(ctx.redis)
                outage("Prefect or the store").ok()
            except Exception as e:  # Prefect or the store may be down for a while: try again later
                outage("Prefect or the store").failed(e, "applying order changes to Prefect")
            wakeups = await self._wait_for_wakeup(wakeups)
        if wakeups is not None:
            await wakeups.aclose()

    async def _subscribed(self, ctx: FlowContext, wakeups: PubSub | None) -> PubSub | None:
        """The subscription to the API's wake-ups, (re)made before a sync pass so none is missed."""
        if wakeups is not None:
            return wakeups
        wakeups = ctx.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await wakeups.subscribe(SYNC_WAKEUP)
            outage("Valkey").ok()
            return wakeups
        except Exception as e:  # Valkey down: sync on the interval until it is back
            outage("Valkey").failed(e, "order-change wake-ups")
            await wakeups.aclose()
            return None

    async def _wait_for_wakeup(self, wakeups: PubSub | None) -> PubSub | None:
        """Until an order change is announced or the sync interval has passed, whichever comes first."""
        interval = self.settings.sync_interval_seconds
        if wakeups is None:
            await self._stopped_within(interval)
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + interval
        try:
            while (left := deadline - loop.time()) > 0 and not self._stop.is_set():
                if await wakeups.get_message(timeout=left) is not None:
                    while await wakeups.get_message(timeout=0) is not None:
                        pass  # a burst of changes: one sync pass serves them all
                    break
            return wakeups
        except Exception as e:  # the connection broke (Valkey restarted): subscribe again next time
            outage("Valkey").failed(e, "order-change wake-ups")
            await wakeups.aclose()
            return None

    async def _recover_loop(self, ctx: FlowContext) -> None:
        while not await self._stopped_within(self.settings.recover_interval_seconds):
            try:
                found = await asyncio.to_thread(ctx.store.recover_pending)
            except Exception as e:  # the store may be down for a while: try again next time
                outage("the store").failed(e, "finishing interrupted store operations")
                continue
            outage("the store").ok()
            if found:
                log.info("finished %d interrupted store operation(s)", found)

    async def _requeue_loop(self, ctx: FlowContext) -> None:
        failing = False
        while not await self._stopped_within(REQUEUE_INTERVAL_SECONDS):
            try:
                done = await requeue_lost(ctx.store, ctx.queue, ctx.redis)
            except Exception as e:  # Valkey or the store may be down for a while: try again next time
                if not failing:
                    log.warning("jobs claimed but not held by Valkey cannot be checked yet (%s: %s); retrying",
                                type(e).__name__, e)
                failing = True
                continue
            failing = False
            if done:
                log.info(done.summary())

    async def _retention_loop(self, ctx: FlowContext) -> None:
        while not await self._stopped_within(retention_interval(ctx.settings)):
            try:
                summary = await run_retention(ctx)
            except Exception as e:  # Prefect or Valkey may be down for a while: try again next time
                outage("Prefect or Valkey").failed(e, "deleting finished flow runs")
                continue
            log.info(summary)

    async def _lateness_loop(self, ctx: FlowContext) -> None:
        while not await self._stopped_within(ctx.settings.lateness_interval_seconds):
            try:
                checked = await check_lateness(ctx.store, ctx.redis, self._alerts, ctx.settings)
            except Exception as e:  # Valkey or the store may be down for a while: try again next time
                outage("Valkey or the store").failed(e, "checking for late orders")
                continue
            outage("Valkey or the store").ok()
            if checked.alerted or checked.recovered:
                log.info(checked.summary())

    # --- running flow runs -----------------------------------------------------------

    async def _submit_run(self, flow_run: FlowRun) -> None:
        """Prefect's submission of a flow run, without what a run inside this process has no use for.

        Prefect's worker hands each run to infrastructure: before starting it, it reads the run's deployment
        twice and its flow, merges job variables into a job configuration, labels the run with the worker,
        proposes a Submitting state, records the infrastructure's process id and emits two events — six API
        calls and two events per run on top of the Pending, Running and Completed states and the log line.
        Here the run executes in the worker's own process with no job variables, so only Pending (the claim
        that keeps two workers from taking one run) and then `run` remain. A run whose worker dies between its
        states is found by the store's dispatch timer (`flows/prefect_sync.py`), as before.
        """
        try:
            if await self._propose_pending_state(flow_run):
                await self.run(flow_run, _NO_JOB_CONFIGURATION)
        except Exception as e:  # the Prefect server went away mid-run: say so on the run when it can be reached
            log.warning("flow run %s did not finish: %s", flow_run.id, e)
            await self._propose_crashed_state(flow_run, f"the crawlcoin worker lost the run: {type(e).__name__}: {e}")
        finally:
            self._release_limit_slot(flow_run.id)
            self._submitting_flow_run_ids.discard(flow_run.id)
            if self._cancelling_observer is not None:
                self._cancelling_observer.remove_in_flight_flow_run_id(flow_run.id)

    async def _flow_name(self, flow_run: FlowRun) -> str:
        if flow_run.flow_id not in self._flow_names:
            self._flow_names[flow_run.flow_id] = (await self.client.read_flow(flow_run.flow_id)).name
        return self._flow_names[flow_run.flow_id]

    async def _execute(self, flow_run: FlowRun) -> str:
        assert self._ctx is not None
        name = await self._flow_name(flow_run)
        if name not in FLOWS:
            raise ValueError(f"the crawlcoin worker does not run flow {name!r}")
        return await FLOWS[name](self._ctx, flow_run)

    async def _log_to_run(self, flow_run: FlowRun, line: str) -> None:
        """Put the run's summary (e.g. the repetitions it queued) on its page in the Prefect UI."""
        try:
            await self.client.create_logs([LogCreate(
                name="crawlcoin", level=logging.INFO, message=line, timestamp=datetime.now(UTC),
                flow_run_id=flow_run.id)])
        except Exception:  # the run's state message says the same
            log.warning("could not write the log line of flow run %s", flow_run.id, exc_info=True)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: BaseJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> CrawlcoinWorkerResult:
        if task_status is not None:
            task_status.started(os.getpid())
        logger = self.get_flow_run_logger(flow_run)
        if flow_run.expected_start_time is not None:  # claimed up to `prefetch` early: wait here, not in a
            # second request (the server answers a Running proposed before the scheduled time with "wait N s")
            await asyncio.sleep(max(0.0, (flow_run.expected_start_time - datetime.now(UTC)).total_seconds()))
        try:
            # Waits server-side until the scheduled time (WaitForScheduledTime) if the clocks disagree, then starts.
            state = await propose_state(self.client, Running(), flow_run_id=flow_run.id)
        except Abort as e:
            logger.info("flow run not started: %s", e)
            return CrawlcoinWorkerResult(identifier=str(flow_run.id), status_code=0)
        if not state.is_running():
            logger.info("flow run not started: server answered %s", state.type.value)
            return CrawlcoinWorkerResult(identifier=str(flow_run.id), status_code=0)
        try:
            summary = await self._execute(flow_run)
        except Exception as e:
            logger.exception("flow run failed")
            await propose_state(self.client, Failed(message=f"{type(e).__name__}: {e}"), flow_run_id=flow_run.id)
            return CrawlcoinWorkerResult(identifier=str(flow_run.id), status_code=0)
        await propose_state(self.client, Completed(message=summary), flow_run_id=flow_run.id)
        logger.info(summary)
        await self._log_to_run(flow_run, summary)
        return CrawlcoinWorkerResult(identifier=str(flow_run.id), status_code=0)
