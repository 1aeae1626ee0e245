from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, StoreDep
from api.openapi import errors
from api.services import changes
from core.schemas import ChangePage

router = APIRouter(prefix="/orders/{order_id}/changes", tags=["results"])


@router.get("", responses=errors(401, 404, 422))
def list_changes(
    order_id: str,
    user: CurrentUser,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[int, Query(ge=0, description="Only repetitions numbered above this.")] = 0,
) -> ChangePage:
    """The order's changes, oldest first: each repetition whose page (or extracted value) differs from the
    previous valid result, with a unified diff."""
    return changes.list_page(store, user, order_id, limit, after)
