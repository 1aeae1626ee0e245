from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import CurrentUser, StoreDep
from api.openapi import errors
from api.services import export
from api.services.orders import get_own
from core.errors import InvalidInput
from core.schemas import IsoDateTime

router = APIRouter(prefix="/orders/{order_id}/export", tags=["results"])
_WRITE = {"jsonl": export.jsonl, "csv": export.csv_chunks, "zip": export.zip_chunks}


_FILES: dict[int | str, dict[str, Any]] = {200: {"content": {t: {} for t in export.MEDIA_TYPES.values()}}}


@router.get("", response_class=StreamingResponse, responses={**_FILES, **errors(401, 404, 422)})
def export_results(
    order_id: str,
    user: CurrentUser,
    store: StoreDep,
    format: Annotated[Literal["jsonl", "csv", "zip"], Query(description="jsonl and csv: one row per result "
                      "(metadata and extracted value); zip: the pages.")] = "jsonl",
    since: Annotated[IsoDateTime | None, Query(description="Only results fetched at or after this time.")] = None,
    until: Annotated[IsoDateTime | None, Query(description="Only results fetched before this time.")] = None,
) -> StreamingResponse:
    """The order's results as a file, streamed: JSON Lines or CSV of metadata and extracted values, or a ZIP of
    the pages, for any time range."""
    order = get_own(store, user, order_id)
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise InvalidInput(f"{name} needs a timezone, e.g. 2030-01-01T09:00:00Z")
    chunks = _WRITE[format](export.results(store, order, since, until))
    return StreamingResponse(chunks, media_type=export.MEDIA_TYPES[format],
                             headers={"Content-Disposition": f'attachment; filename="{order.id}-results.{format}"',
                                      "X-Content-Type-Options": "nosniff"})
