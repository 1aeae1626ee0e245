"""The API's side of scheduling: after an order change, apply it to Prefect in the background.

The change itself and its sync request are already stored; this only shortens the wait.
If Prefect is slow or down the request stays pending and the workers' sync loop (or the
reconcile flow) applies it later — a customer's request never waits on Prefect.
"""

import logging

from fastapi import BackgroundTasks, Request

from core.queue import JobQueue
from core.scheduling import PrefectSync, prefect_client

log = logging.getLogger("crawlcoin.api.scheduling")


async def _sync_now(request: Request) -> None:
    state = request.app.state
    if not state.settings.prefect_api_url:
        return  # no Prefect configured: requests wait for a worker that has one
    try:
        async with prefect_client(state.settings) as client:
            await PrefectSync(client, state.store, JobQueue(state.aredis), state.settings).sync_pending(state.aredis)
    except Exception as e:  # Prefect down or busy: the pending request is applied later
        log.warning("order change not applied to Prefect yet (%s: %s); workers will retry", type(e).__name__, e)


def sync_soon(background: BackgroundTasks, request: Request) -> None:
    background.add_task(_sync_now, request)
