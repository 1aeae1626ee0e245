from fastapi import APIRouter, Response, status

from api.deps import RedisDep, SettingsDep, StoreDep
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
