from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.deps import CurrentUser, StoreDep
from api.openapi import errors
from api.services import results
from core.schemas import ResultPage

router = APIRouter(prefix="/orders/{order_id}/results", tags=["results"])


@router.get("", responses=errors(401, 404, 422))
def list_results(
    order_id: str,
    user: CurrentUser,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[int | None, Query(ge=1, description="Only repetitions numbered below this.")] = None,
) -> ResultPage:
    """The order's results, newest repetition first."""
    return results.list_page(store, user, order_id, limit, before)


@router.get("/{n}/body", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}, **errors(401, 404, 410, 422)})
def download_body(order_id: str, n: Annotated[int, Path(ge=1)], user: CurrentUser, store: StoreDep) -> Response:
    """The fetched page of one repetition, as the miner received it (capped)."""
    data, content_type = results.body(store, user, order_id, n)
    return Response(content=data, media_type=content_type,
                    headers={"Content-Disposition": f'attachment; filename="{order_id}-{n}"',
                             "X-Content-Type-Options": "nosniff"})
