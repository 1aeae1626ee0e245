"""Listing an order's results and downloading one body."""

from datetime import datetime

from api.services.orders import get_own
from core.errors import Gone, NotFound
from core.schemas import ResultOut, ResultPage
from core.storage import Observation, Result, Store, User, job_key


def result_out(r: Result, due_at: datetime | None = None, obs: Observation | None = None) -> ResultOut:
    return ResultOut(n=r.n, key=r.job_key, status=r.status, final_url=r.final_url, headers=r.headers,
                     body_size=r.body_size, truncated=r.truncated, sha256=r.sha256, due_at=due_at,
                     fetched_at=r.fetched_at,
                     stored_at=r.stored_at, elapsed_ms=r.elapsed_ms, error=r.error, error_text=r.error_text,
                     body_pruned_at=r.body_pruned_at, extracted=obs.value if obs else None,
                     changed=obs.changed if obs and obs.valid else None, validation=r.validation)


def list_page(store: Store, user: User, order_id: str, limit: int, before: int | None) -> ResultPage:
    """Newest first: the results of repetitions numbered below `before` (default: all), `limit` at a time."""
    order = get_own(store, user, order_id)
    top = order.runs_claimed if before is None else min(before - 1, order.runs_claimed)
    items: list[Result] = []
    while top > 0 and len(items) < limit:
        low = max(0, top - limit)
        chunk = [r for r in store.list_results(order.id, low, top - low) if r.n <= top]
        items.extend(reversed(chunk))
        top = low
    items = items[:limit]
    more = len(items) == limit and items[-1].n > 1
    due = {rep.n: rep.due_at for rep in store.get_repetitions(order.id, [r.n for r in items])}
    seen = {o.n: o for o in store.list_observations(order.id, items[-1].n - 1, items[0].n - items[-1].n + 1)
            } if items else {}
    return ResultPage(items=[result_out(r, due.get(r.n), seen.get(r.n)) for r in items],
                      next_cursor=str(items[-1].n) if more else None)


def body(store: Store, user: User, order_id: str, n: int) -> tuple[bytes, str]:
    order = get_own(store, user, order_id)
    result = store.get_result(job_key(order.id, n))
    if result is None:
        raise NotFound(f"repetition {n} has no result yet")
    if result.body_pruned_at is not None:
        raise Gone(f"the page of repetition {n} was deleted on {result.body_pruned_at:%Y-%m-%d %H:%M} UTC, its "
                   f"retention after delivery to your result client over; its size, SHA-256, status, headers and "
                   f"timings are still listed")
    content_type = next((v for k, v in result.headers.items() if k.lower() == "content-type"),
                        "application/octet-stream")
    return result.body, content_type
