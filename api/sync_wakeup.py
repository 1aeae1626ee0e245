"""After an order change, wake the workers so they apply it to Prefect now.

The change and its sync request are already stored (one transaction); this only shortens the
wait. The API talks to neither Prefect nor the flows: it publishes on `core.queue.SYNC_WAKEUP`
and every crawlcoin worker's sync loop picks the pending requests up. If Valkey drops the
notice, a worker applies the change at its next `sync_interval_seconds` — a customer's
request never waits on Prefect.
"""

import logging

from fastapi import BackgroundTasks, Request

from core.outage import outage
from core.queue import wake_sync

log = logging.getLogger("crawlcoin.api.sync_wakeup")


async def _wake(request: Request) -> None:
    try:
        await wake_sync(request.app.state.aredis)
    except Exception as e:  # Valkey busy or down: the stored request is applied at the next interval
        outage("Valkey").failed(e, "waking workers for an order change; they apply it at their next interval")
        return
    outage("Valkey").ok()


def wake_workers(background: BackgroundTasks, request: Request) -> None:
    background.add_task(_wake, request)
