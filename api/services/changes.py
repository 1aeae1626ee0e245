"""An order's change records: the repetitions whose page or extracted value changed."""

from api.services.orders import get_own
from core.schemas import ChangeOut, ChangePage
from core.storage import Observation, Store, User


def change_out(o: Observation) -> ChangeOut:
    assert o.previous_n is not None  # a change is always against a previous valid result
    return ChangeOut(n=o.n, previous_n=o.previous_n, fetched_at=o.fetched_at, observed_at=o.created_at,
                     extracted=o.value, diff=o.diff)


def list_page(store: Store, user: User, order_id: str, limit: int, after: int) -> ChangePage:
    """Oldest first: the changes of repetitions numbered above `after`, `limit` at a time."""
    order = get_own(store, user, order_id)
    items = store.list_observations(order.id, after, limit, changes_only=True)
    return ChangePage(items=[change_out(o) for o in items],
                      next_cursor=str(items[-1].n) if len(items) == limit else None)
