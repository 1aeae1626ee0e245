from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status

from api.deps import CurrentUser, IdempotencyKey, SettingsDep, StoreDep
from api.openapi import errors
from api.services import orders
from api.sync_wakeup import wake_workers
from core.schemas import CancelOut, OrderChange, OrderCreate, OrderOut, OrderPage

router = APIRouter(prefix="/orders", tags=["orders"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(401, 402, 409, 413, 422))
def create_order(
    req: OrderCreate,
    response: Response,
    user: CurrentUser,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey,
    background: BackgroundTasks,
    request: Request,
) -> OrderOut:
    """Place an order; its full cost is held in escrow at once."""
    out, created = orders.create(store, settings, user, req, idempotency_key)
    if created:
        wake_workers(background, request)
    else:
        response.status_code = status.HTTP_200_OK
    return out


@router.get("", responses=errors(401, 422))
def list_orders(
    user: CurrentUser,
    store: StoreDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> OrderPage:
    """Your orders, newest first."""
    return orders.list_own(store, settings, user, limit, cursor)


@router.get("/{order_id}", responses=errors(401, 404))
def get_order(order_id: str, user: CurrentUser, store: StoreDep, settings: SettingsDep) -> OrderOut:
    """One of your orders."""
    return orders.order_out(store, settings, orders.get_own(store, user, order_id))


@router.patch("/{order_id}", responses=errors(401, 402, 404, 409, 413, 422))
def edit_order(
    order_id: str,
    req: OrderChange,
    user: CurrentUser,
    store: StoreDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey,
    background: BackgroundTasks,
    request: Request,
) -> OrderOut:
    """Change the URL, schedule, extraction or max_runs of an active or paused order, from its next undispatched
    repetition on; the escrow is topped up or refunded by the difference in cost."""
    out = orders.edit(store, settings, user, order_id, req, idempotency_key)
    wake_workers(background, request)
    return out


@router.post("/{order_id}/pause", responses=errors(401, 404, 409))
def pause_order(
    order_id: str, user: CurrentUser, store: StoreDep, settings: SettingsDep, background: BackgroundTasks,
    request: Request,
) -> OrderOut:
    """Stop scheduling repetitions until resumed."""
    out = orders.pause(store, settings, user, order_id)
    wake_workers(background, request)
    return out


@router.post("/{order_id}/resume", responses=errors(401, 404, 409))
def resume_order(
    order_id: str, user: CurrentUser, store: StoreDep, settings: SettingsDep, background: BackgroundTasks,
    request: Request,
) -> OrderOut:
    """Continue a paused order."""
    out = orders.resume(store, settings, user, order_id)
    wake_workers(background, request)
    return out


@router.post("/{order_id}/cancel", responses=errors(401, 404, 409))
def cancel_order(
    order_id: str, user: CurrentUser, store: StoreDep, settings: SettingsDep, background: BackgroundTasks,
    request: Request,
) -> CancelOut:
    """Cancel the order and refund its unclaimed repetitions."""
    out = orders.cancel(store, settings, user, order_id)
    wake_workers(background, request)
    return out
