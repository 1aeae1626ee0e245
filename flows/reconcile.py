"""The reconcile flow: bring Prefect's deployments in line with the orders in the store."""

from prefect import flow
from redis.asyncio import Redis

from core.queue import JobQueue
from core.scheduling import PrefectSync, prefect_client
from core.settings import Settings
from core.storage import open_store


@flow(name="reconcile", log_prints=True, retries=0)
async def reconcile() -> str:
    """Apply every pending order change (create, pause, resume, cancel, complete) to Prefect."""
    settings = Settings()
    store = open_store(settings.resolved_store_url)
    redis = Redis.from_url(settings.resolved_redis_url)
    try:
        recovered = store.recover_pending()  # operations a crashed process left half done
        if recovered:
            print(f"finished {recovered} interrupted store operation(s)")
        async with prefect_client(settings) as client:
            synced = await PrefectSync(client, store, JobQueue(redis), settings).sync_pending(redis)
        print(f"synced {synced} order(s)")
        return f"synced {synced} order(s)"
    finally:
        await redis.aclose()
        store.close()
