"""Webhooks: created with a secret shown once, their target checked like an order's, their delivery log read."""

import uuid
from datetime import UTC, datetime

from api.pagination import decode_cursor, encode_cursor
from core import webhooks as signing
from core.errors import NotFound
from core.schemas import WebhookCreate, WebhookCreated, WebhookDeliveryOut, WebhookDeliveryPage, WebhookOut
from core.settings import Settings
from core.storage import Store, User, Webhook, WebhookEvent
from core.urls import check_target_url


def webhook_out(webhook: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(webhook.model_dump())


def create(store: Store, settings: Settings, user: User, req: WebhookCreate) -> WebhookCreated:
    url = check_target_url(req.url, allow_private=settings.allow_private_targets, max_length=settings.max_url_length)
    if req.order_id is not None:
        order = store.get_order(req.order_id)
        if order is None or order.owner_id != user.id:
            raise NotFound("order not found")
    webhook = Webhook(id=str(uuid.uuid4()), owner_id=user.id, order_id=req.order_id, url=url,
                      secret=signing.new_secret(), event=WebhookEvent(req.event), created_at=datetime.now(UTC))
    store.create_webhook(webhook)
    return WebhookCreated(**webhook_out(webhook).model_dump(), secret=webhook.secret)


def list_for(store: Store, user: User) -> list[WebhookOut]:
    return [webhook_out(w) for w in store.list_webhooks(user.id)]


def _own(store: Store, user: User, webhook_id: str) -> Webhook:
    webhook = store.get_webhook(webhook_id) if webhook_id.isprintable() else None
    if webhook is None or webhook.owner_id != user.id or webhook.deleted_at is not None:
        raise NotFound("webhook not found")
    return webhook


def delete(store: Store, user: User, webhook_id: str) -> None:
    _own(store, user, webhook_id)
    store.delete_webhook(user.id, webhook_id, datetime.now(UTC))


def deliveries(store: Store, user: User, webhook_id: str, limit: int, cursor: str | None) -> WebhookDeliveryPage:
    _own(store, user, webhook_id)
    found = store.list_webhook_deliveries(webhook_id, limit, decode_cursor(cursor))
    items = [WebhookDeliveryOut.model_validate(d.model_dump()) for d in found]
    next_cursor = encode_cursor(found[-1].created_at, found[-1].id) if len(found) == limit else None
    return WebhookDeliveryPage(items=items, next_cursor=next_cursor)
