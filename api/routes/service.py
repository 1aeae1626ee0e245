import asyncio

from fastapi import APIRouter, Request, Response, status

from api.deps import RedisDep, SettingsDep, StoreDep
from core import metrics
from core.outage import VALKEY_DOWN, outage
from core.schemas import HealthOut, MetaOut

router = APIRouter(tags=["service"])


@router.get("/health", responses={503: {"model": HealthOut, "description": "The store or Valkey does not answer."}})
def health(store: StoreDep, redis: RedisDep, response: Response) -> HealthOut:
    """Whether the store and Valkey answer."""
    checks = {}
    for name, probe in (("store", store.ping), ("valkey", redis.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as e:  # any failure of a dependency is reported, not raised
            checks[name] = f"error: {type(e).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthOut(status="ok" if healthy else "degraded", **checks)


@router.get("/meta")
def meta(settings: SettingsDep) -> MetaOut:
    """What this installation offers: mode, faucet, prices and limits."""
    return MetaOut(
        mode=settings.mode.value,
        faucet_enabled=settings.faucet_enabled,
        faucet_max_amount=settings.faucet_max_amount if settings.faucet_enabled else 0,
        price_per_run=settings.price_per_run,
        max_runs_cap=settings.max_runs_cap,
        min_interval_seconds=settings.min_interval_seconds,
        result_body_retention_seconds=settings.result_body_retention_seconds,
    )


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request, store: StoreDep) -> Response:
    """Prometheus metrics: the due queue and the pending sync requests, read now (a dependency that does not
    answer leaves its figures as they were and counts an error)."""
    try:
        await metrics.refresh_queue(request.app.state.aredis)
        outage("Valkey").ok()
    except VALKEY_DOWN as e:
        outage("Valkey").failed(e, "reading the queue for /metrics")
    try:
        await asyncio.to_thread(metrics.refresh_sync_backlog, store)
        outage("the store").ok()
    except Exception as e:  # any store's error: the rest of the figures still go out
        outage("the store").failed(e, "reading the sync requests for /metrics")
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
