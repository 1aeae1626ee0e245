from typing import Annotated

from fastapi import APIRouter, Depends, Query, status

from api.deps import CurrentUser, SettingsDep, StoreDep, no_store
from api.openapi import errors
from api.services import webhooks
from core.schemas import WebhookCreate, WebhookCreated, WebhookDeliveryPage, WebhookOut

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Depends(no_store)],
             responses=errors(401, 404, 413, 422))
def create_webhook(req: WebhookCreate, user: CurrentUser, store: StoreDep, settings: SettingsDep) -> WebhookCreated:
    """Have every change (or every result) of one order, or of all yours, POSTed to a URL; the signing secret is
    shown only now."""
    return webhooks.create(store, settings, user, req)


@router.get("", responses=errors(401))
def list_webhooks(user: CurrentUser, store: StoreDep) -> list[WebhookOut]:
    """Your webhooks, oldest first (without secrets)."""
    return webhooks.list_for(store, user)


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(401, 404))
def delete_webhook(webhook_id: str, user: CurrentUser, store: StoreDep) -> None:
    """Delete one of your webhooks; what it has not delivered yet is not sent."""
    webhooks.delete(store, user, webhook_id)


@router.get("/{webhook_id}/deliveries", responses=errors(401, 404, 422))
def list_deliveries(
    webhook_id: str,
    user: CurrentUser,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> WebhookDeliveryPage:
    """The webhook's delivery log, newest first: each notification's state, attempts and last answer."""
    return webhooks.deliveries(store, user, webhook_id, limit, cursor)
