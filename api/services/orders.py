"""Creating, listing and steering orders."""

import hashlib
import uuid
from collections import Counter
from datetime import UTC, datetime

from api.order_rules import check_order, check_schedule
from api.pagination import decode_cursor, encode_cursor
from core import extraction, ledger, schedules
from core.errors import Conflict, InvalidInput, NotFound
from core.lateness import lateness
from core.schemas import (
    CancelOut,
    CronSchedule,
    IntervalSchedule,
    Lateness,
    OrderChange,
    OrderCreate,
    OrderOut,
    OrderPage,
    OrderStatus,
    RepetitionCounts,
    RepetitionState,
)
from core.settings import Settings
from core.storage import Order, OrderEdit, Store, User
from core.urls import check_target_url

_IDEMPOTENT_ORDER_NS = uuid.UUID("5b0e4a52-3c4e-4f7e-9a7e-6f1d2c3b4a59")


_COUNTED_AS = {RepetitionState.leased: "fetching", RepetitionState.done: "delivered",
               RepetitionState.refunded: "refunded", RepetitionState.failed: "failed"}


def repetitions(
    store: Store, order: Order, now: datetime, late_after_seconds: float
) -> tuple[RepetitionCounts, datetime | None, Lateness | None]:
    """Where each repetition is, when the next one is due, and how late the order runs."""
    counts: Counter[str] = Counter()
    next_run_at = None
    claimed = store.get_repetitions(order.id, list(range(1, order.runs_claimed + 1))) if order.runs_claimed else []
    for rep in claimed:
        if rep.state is RepetitionState.queued and rep.due_at > now:
            counts["waiting"] += 1
            next_run_at = min(next_run_at or rep.due_at, rep.due_at)
        elif rep.state is RepetitionState.queued:
            counts["queued"] += 1
        else:
            counts[_COUNTED_AS[rep.state]] += 1
    unclaimed = order.max_runs - order.runs_claimed
    if order.status in (OrderStatus.cancelled, OrderStatus.completed):
        counts["refunded"] += unclaimed  # never handed out: refunded when the order ended
    else:
        counts["scheduled"] += unclaimed
        if order.status is OrderStatus.active and order.next_due_at is not None:
            next_run_at = min(next_run_at or order.next_due_at, order.next_due_at)
    if order.status is not OrderStatus.active:
        next_run_at = None
    late = lateness(claimed, now, late_after_seconds)
    return RepetitionCounts(**{k: counts[k] for k in RepetitionCounts.model_fields}), next_run_at, late


def order_out(store: Store, settings: Settings, order: Order) -> OrderOut:
    schedule: IntervalSchedule | CronSchedule
    if order.schedule_kind == "interval":
        schedule = IntervalSchedule(kind="interval", every_seconds=order.every_seconds or 0)
    else:
        schedule = CronSchedule(kind="cron", cron=order.cron or "", timezone=order.timezone or "UTC")
    counts, next_run_at, late = repetitions(store, order, datetime.now(UTC), settings.late_after_seconds)
    return OrderOut(
        id=order.id,
        url=order.url,
        method=order.method,
        headers=order.headers,
        body=order.body,
        schedule=schedule,
        start_at=order.start_at,
        max_runs=order.max_runs,
        extraction=order.extraction,
        runs_claimed=order.runs_claimed,
        runs_left=order.max_runs - order.runs_claimed,
        repetitions=counts,
        next_run_at=next_run_at,
        late=late,
        status=order.status,
        price_per_run=order.price_per_run,
        cost=order.cost,
        escrow_balance=store.get_balance(ledger.escrow_account(order.id)),
        next_due_at=order.next_due_at,
        deployment_id=order.deployment_id,
        created_at=order.created_at,
    )


def create(
    store: Store, settings: Settings, user: User, req: OrderCreate, idempotency_key: str | None
) -> tuple[OrderOut, bool]:
    now = datetime.now(UTC)
    url = check_target_url(req.url, allow_private=settings.allow_private_targets, max_length=settings.max_url_length)
    start_at = check_order(req, settings, now)
    if idempotency_key:
        order_id = str(uuid.uuid5(_IDEMPOTENT_ORDER_NS, f"{user.id}:{idempotency_key}"))
    else:
        order_id = str(uuid.uuid4())
    schedule = req.schedule
    order = Order(
        id=order_id,
        owner_id=user.id,
        url=url,
        method=req.method,
        headers=req.headers,
        body=req.body,
        schedule_kind=schedule.kind,
        every_seconds=schedule.every_seconds if isinstance(schedule, IntervalSchedule) else None,
        cron=schedule.cron if isinstance(schedule, CronSchedule) else None,
        timezone=schedule.timezone if isinstance(schedule, CronSchedule) else None,
        start_at=start_at,
        max_runs=req.max_runs,
        extraction=req.extraction,
        price_per_run=settings.price_per_run,
        request_hash=hashlib.sha256(req.model_dump_json().encode()).hexdigest(),
        created_at=now,
        updated_at=now,
    )
    order.next_due_at = schedules.first_due(order)
    stored, created = store.create_order(order)
    return order_out(store, settings, stored), created


def get_own(store: Store, user: User, order_id: str) -> Order:
    # An id from the URL path may hold anything, NUL or a lone surrogate included, which no store can look up.
    order = store.get_order(order_id) if order_id.isprintable() else None
    if order is None or order.owner_id != user.id:
        raise NotFound("order not found")
    return order


def list_own(store: Store, settings: Settings, user: User, limit: int, cursor: str | None) -> OrderPage:
    orders = store.list_orders(user.id, limit, decode_cursor(cursor))
    next_cursor = encode_cursor(orders[-1].created_at, orders[-1].id) if len(orders) == limit else None
    return OrderPage(items=[order_out(store, settings, o) for o in orders], next_cursor=next_cursor)


def pause(store: Store, settings: Settings, user: User, order_id: str) -> OrderOut:
    order = get_own(store, user, order_id)
    changed = store.set_order_status(order.id, {OrderStatus.active, OrderStatus.paused}, OrderStatus.paused)
    if changed is None:
        raise Conflict(f"a {order.status.value} order cannot be paused")
    return order_out(store, settings, changed)


def resume(store: Store, settings: Settings, user: User, order_id: str) -> OrderOut:
    order = get_own(store, user, order_id)
    next_due = schedules.first_due_at_or_after(order, datetime.now(UTC)) if order.next_due_at is None else None
    changed = store.set_order_status(order.id, {OrderStatus.paused, OrderStatus.active}, OrderStatus.active,
                                     next_due_at=next_due)
    if changed is None:
        raise Conflict(f"a {order.status.value} order cannot be resumed")
    return order_out(store, settings, changed)


def cancel(store: Store, settings: Settings, user: User, order_id: str) -> CancelOut:
    order = get_own(store, user, order_id)
    result = store.cancel_order(order.id)
    if result is None:
        raise Conflict(f"the order is already {order.status.value}")
    cancelled, refunded = result
    return CancelOut(order=order_out(store, settings, cancelled), refunded=refunded)


def edit(store: Store, settings: Settings, user: User, order_id: str, req: OrderChange,
         idempotency_key: str | None) -> OrderOut:
    order = get_own(store, user, order_id)
    if not req.model_fields_set:
        raise InvalidInput("nothing to change: give url, schedule, max_runs or extraction")
    changes: dict[str, object] = {}
    if req.url is not None:
        changes["url"] = check_target_url(req.url, allow_private=settings.allow_private_targets,
                                          max_length=settings.max_url_length)
    if req.max_runs is not None:
        if req.max_runs > settings.max_runs_cap:
            raise InvalidInput(f"max_runs must be at most {settings.max_runs_cap}")
        changes["max_runs"] = req.max_runs
    if req.schedule is not None:
        check_schedule(req.schedule, order.start_at, settings)
        if isinstance(req.schedule, IntervalSchedule):
            changes |= {"schedule_kind": "interval", "every_seconds": req.schedule.every_seconds, "cron": None,
                        "timezone": None}
        else:
            changes |= {"schedule_kind": "cron", "every_seconds": None, "cron": req.schedule.cron,
                        "timezone": req.schedule.timezone}
    if "extraction" in req.model_fields_set:
        if req.extraction is not None:
            extraction.check(req.extraction)
        changes["extraction"] = req.extraction
    current = order.model_dump(include=set(OrderEdit.model_fields))
    new = OrderEdit.model_validate({**current, "extraction": order.extraction, **changes})
    changed = store.edit_order(order.id, new, idempotency_key or str(uuid.uuid4()), datetime.now(UTC))
    if changed is None:
        raise NotFound("order not found")
    return order_out(store, settings, changed)
