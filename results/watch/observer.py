"""Observing an order's results in n order: the extracted value of each, and whether it changed.

Repetition n is observed only once every repetition before it is settled (done, failed or
refunded), the rule result delivery follows too, so the valid result it is compared with — the
newest one before it — can no longer change. Observing is deterministic (the same results give the
same observations), so two watchers of one order, or a watcher that crashed half-way and starts
again, write the same thing; the store keeps the first write. The webhook deliveries the
observations make are stored just before them (`webhooks.store_deliveries`), once each.

A result is valid — a page worth comparing — when it was fetched without an error and with a 2xx
status, and its body still kept: an error page or a failed fetch is no change of the page. The first valid result of an
order, and the first after its extraction was changed, is the baseline: nothing to compare with.
"""

import difflib
import hashlib
from collections import defaultdict
from datetime import UTC, datetime

from core.extraction import extract, page_text
from core.storage import Observation, Order, Result, Store, WatchCursor, job_key, rules
from results.watch.webhooks import deliveries_for, store_deliveries

MAX_DIFF_CHARS = 65_536
_BATCH = 64


def valid(result: Result) -> bool:
    # A page whose body was deleted (retention after delivery) is no page to compare either.
    return (result.error is None and result.status is not None and 200 <= result.status < 300
            and result.body_pruned_at is None)


def content_type(result: Result) -> str | None:
    return next((v for k, v in result.headers.items() if k.lower() == "content-type"), None)


def unified_diff(before: str, after: str, before_n: int, after_n: int) -> str:
    """The unified diff of two texts, line by line, capped at MAX_DIFF_CHARS."""
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), f"repetition {before_n}",
                                 f"repetition {after_n}", lineterm="")
    text = "\n".join(lines)
    if len(text) > MAX_DIFF_CHARS:
        cut = text.rfind("\n", 0, MAX_DIFF_CHARS)
        text = text[:cut if cut > 0 else MAX_DIFF_CHARS] + "\n… (diff cut here)"
    return text


class _Previous:
    """The newest valid result observed, with its page loaded only if a diff needs it."""

    def __init__(self, store: Store, order_id: str, observation: Observation | None) -> None:
        self.store, self.order_id, self.observation = store, order_id, observation
        self._result: Result | None = None

    def text(self) -> str | None:
        assert self.observation is not None
        if self.observation.value is not None:
            return self.observation.value
        if self._result is None or self._result.n != self.observation.n:
            self._result = self.store.get_result(job_key(self.order_id, self.observation.n))
        return page_text(self._result.body, content_type(self._result)) if self._result else None

    def became(self, observation: Observation, result: Result) -> None:
        self.observation, self._result = observation, result


def observe(order: Order, result: Result, previous: _Previous, now: datetime) -> Observation:
    """What one result shows, compared with the newest valid result before it."""
    spec = order.extraction.model_dump_json() if order.extraction else None
    obs = Observation(order_id=order.id, n=result.n, fetched_at=result.fetched_at, valid=valid(result),
                      extraction=spec, created_at=now)
    if not obs.valid:
        return obs
    if order.extraction is not None:
        obs.value, obs.value_truncated = extract(order.extraction, result.body, content_type(result))
        obs.value_sha256 = hashlib.sha256(obs.value.encode()).hexdigest()
    else:
        obs.value_sha256 = result.sha256
    before = previous.observation
    if before is None or before.extraction != spec:  # the baseline: nothing like it to compare with
        return obs
    obs.previous_n = before.n
    obs.changed = obs.value_sha256 != before.value_sha256
    if obs.changed:
        old = previous.text()
        new = obs.value if obs.value is not None else page_text(result.body, content_type(result))
        if old is not None and new is not None:
            obs.diff = unified_diff(old, new, before.n, result.n)
    return obs


def _observe_each(order: Order, ns: list[int], results: dict[int, Result], previous: _Previous, now: datetime,
                  last_valid_n: int | None) -> tuple[list[Observation], int | None]:
    """The observations of settled repetitions `ns` in n order (a refunded one has no result, nor an observation),
    and the newest valid one after them."""
    observed = []
    for n in ns:
        result = results.get(n)
        if result is None:
            continue
        obs = observe(order, result, previous, now)
        observed.append(obs)
        if obs.valid:
            previous.became(obs, result)
            last_valid_n = n
    return observed, last_valid_n


def observe_order(store: Store, order_id: str, upto: int = 0) -> WatchCursor:
    """Observe the order's settled results after its watch cursor, as far as they are settled.

    Returns the cursor reached. Cheap when the cursor is at `upto` already (one read).
    """
    return observe_order_from(store, order_id, upto)[1]


def observe_order_from(store: Store, order_id: str, upto: int = 0) -> tuple[WatchCursor, WatchCursor]:
    """`observe_order`, returning the cursor it started from too: (before, reached)."""
    cursor = before = store.get_watch_cursor(order_id)
    if upto and cursor.last_n >= upto:
        return before, cursor
    order = store.get_order(order_id)
    if order is None:
        return before, cursor
    last_obs = None
    if cursor.last_valid_n is not None:
        found = store.list_observations(order_id, cursor.last_valid_n - 1, 1)
        last_obs = found[0] if found and found[0].n == cursor.last_valid_n else None
    previous = _Previous(store, order_id, last_obs)
    while cursor.last_n < order.runs_claimed:
        ns = list(range(cursor.last_n + 1, min(cursor.last_n + _BATCH, order.runs_claimed) + 1))
        reps = {r.n: r for r in store.get_repetitions(order_id, ns)}
        ready = []
        for n in ns:
            rep = reps.get(n)
            if rep is None or rep.state in rules.OPEN:  # not settled yet: its successors wait
                break
            ready.append(n)
        if not ready:
            break
        results = {r.n: r for r in store.list_results(order_id, cursor.last_n, len(ns))}
        now = datetime.now(UTC)
        observed, last_valid_n = _observe_each(order, ready, results, previous, now, cursor.last_valid_n)
        cursor = WatchCursor(order_id=order_id, last_n=ready[-1], last_valid_n=last_valid_n)
        store_deliveries(store, order, observed, now)
        store.record_observations(cursor, observed)
        if len(ready) < len(ns):
            break
    return before, cursor


def observe_orders(store: Store, order_ids: list[str]) -> dict[str, tuple[WatchCursor, WatchCursor]]:
    """`observe_order_from` of several orders at once: (before, reached) per order.

    Each order's next settled repetitions (up to a batch of them) are observed with one store call per kind of
    read for all the orders together (cursors, orders, repetitions, the previous observations, the results with
    the previous pages, the owners' webhooks) and one write of the webhook deliveries and one of the
    observations. An order with more settled after its batch (a backlog) goes on alone, through `observe_order_from`.
    """
    ids = list(dict.fromkeys(order_ids))
    before = {c.order_id: c for c in store.get_watch_cursors(ids)}
    out = {i: (before[i], before[i]) for i in ids}
    orders = {o.id: o for o in store.get_orders(ids)}
    spans = {i: list(range(before[i].last_n + 1, min(before[i].last_n + _BATCH, o.runs_claimed) + 1))
             for i, o in orders.items() if before[i].last_n < o.runs_claimed}
    if not spans:
        return out
    reps = {(r.order_id, r.n): r for r in store.get_repetitions_of(spans, settled_only=True)}
    ready: dict[str, list[int]] = {}
    for i, ns in spans.items():
        for n in ns:
            rep = reps.get((i, n))
            if rep is None or rep.state in rules.OPEN:  # not settled yet: its successors wait
                break
            ready.setdefault(i, []).append(n)
    if not ready:
        return out
    wanted = [(i, v) for i in ready if (v := before[i].last_valid_n) is not None]
    last_obs = {(o.order_id, o.n): o for o in store.get_observations(wanted)}
    # With the new results, the previous valid page of each order compared as a whole (its diff may need it).
    keys = [job_key(i, n) for i, ns in ready.items() for n in ns]
    keys += [job_key(i, v) for i, v in wanted if (i, v) in last_obs and last_obs[i, v].value is None]
    results = {(r.order_id, r.n): r for r in store.get_results(keys)}
    hooks = defaultdict(list)
    for hook in store.list_webhooks_of([orders[i].owner_id for i in ready]):
        hooks[hook.owner_id].append(hook)
    now = datetime.now(UTC)
    batches: list[tuple[WatchCursor, list[Observation]]] = []
    deliveries = []
    for i, ns in ready.items():
        order, cursor = orders[i], before[i]
        previous = _Previous(store, i, last_obs.get((i, cursor.last_valid_n or 0)))
        if previous.observation is not None and (i, previous.observation.n) in results:
            previous.became(previous.observation, results[i, previous.observation.n])
        mine = {n: results[i, n] for n in ns if (i, n) in results}
        observed, last_valid_n = _observe_each(order, ns, mine, previous, now, cursor.last_valid_n)
        reached = WatchCursor(order_id=i, last_n=ns[-1], last_valid_n=last_valid_n)
        batches.append((reached, observed))
        deliveries += deliveries_for([h for h in hooks[order.owner_id] if h.order_id in (None, i)], order, observed,
                                     now)
        out[i] = (cursor, reached)
    if deliveries:  # the outbox first: an observation stored means its deliveries are
        store.add_webhook_deliveries(deliveries)
    store.record_observations_of(batches)
    for i, ns in ready.items():
        if len(ns) == len(spans[i]) and ns[-1] < orders[i].runs_claimed:  # a backlog: the rest of it alone
            out[i] = (before[i], observe_order_from(store, i)[1])
    return out



def observe_ready(store: Store, order_id: str, ns: list[int], results: dict[int, Result]) -> dict[int, Observation]:
    """The observations of settled repetitions `ns` (consecutive, ascending), whose `results` a delivery read.

    Made for a delivery's batch: one read when the watcher observed them already; otherwise the
    ones it has not are observed from `results` (not read again) and written at once, with the
    cursor, the watch cursor and the order read first. Only if the watcher is behind the batch's
    start does it catch up through `observe_order` first.
    """
    first, last = ns[0], ns[-1]
    found = {o.n: o for o in store.list_observations(order_id, first - 1, len(ns))}
    if all(n in found for n in ns if n in results):  # a refunded repetition has no result, nor an observation
        return found
    cursor = store.get_watch_cursor(order_id)
    if cursor.last_n < first - 1:
        cursor = observe_order(store, order_id, first - 1)
        if cursor.last_n < first - 1:  # the order is gone
            return found
    if cursor.last_n >= first and any(n not in found for n in ns if n <= cursor.last_n and n in results):
        found |= {o.n: o for o in store.list_observations(order_id, first - 1, cursor.last_n - first + 1)}
    if cursor.last_n >= last:
        return found
    order = store.get_order(order_id)
    if order is None:
        return found
    last_obs = None
    if cursor.last_valid_n is not None:
        last_obs = found.get(cursor.last_valid_n)
        if last_obs is None:
            before = store.list_observations(order_id, cursor.last_valid_n - 1, 1)
            last_obs = before[0] if before and before[0].n == cursor.last_valid_n else None
    previous = _Previous(store, order_id, last_obs)
    if last_obs is not None and last_obs.n in results:
        previous.became(last_obs, results[last_obs.n])
    now = datetime.now(UTC)
    observed = []
    last_valid_n = cursor.last_valid_n
    for n in ns:
        result = results.get(n)
        if n <= cursor.last_n or result is None:
            continue
        obs = observe(order, result, previous, now)
        observed.append(obs)
        found[n] = obs
        if obs.valid:
            previous.became(obs, result)
            last_valid_n = n
    store_deliveries(store, order, observed, now)
    store.record_observations(WatchCursor(order_id=order_id, last_n=last, last_valid_n=last_valid_n), observed)
    return found
