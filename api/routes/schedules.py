from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.openapi import errors
from api.order_rules import check_timezone
from core import schedules
from core.errors import InvalidInput
from core.schemas import CronPreview

router = APIRouter(prefix="/schedules", tags=["orders"])


@router.get("/cron-preview", responses=errors(422))
def cron_preview(
    cron: Annotated[str, Query(min_length=1, max_length=120, description="Five-field cron expression.")],
    timezone: Annotated[str, Query(min_length=1, max_length=64)] = "UTC",
    count: Annotated[int, Query(ge=1, le=20)] = 5,
) -> CronPreview:
    """When a cron schedule would run next, or which field is wrong (as an order would be told)."""
    check_timezone(timezone)
    problem = schedules.cron_problem(cron)
    if problem is not None:
        raise InvalidInput(problem)
    runs = schedules.next_fires(cron, timezone, datetime.now(UTC), count)
    if not runs:
        raise InvalidInput("this cron expression never fires")
    return CronPreview(next_runs=runs)
