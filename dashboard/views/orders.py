"""Place an order with a live cost preview; follow, pause, resume and cancel your orders."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import streamlit as st

from core.schemas import MetaOut, OrderOut
from dashboard import delivery, ui
from dashboard import format as fmt
from dashboard.client import ApiError

UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
FORM_KEYS = ("new_url", "new_method", "new_headers", "new_body", "new_kind", "new_every", "new_unit", "new_cron",
             "new_cron_tz", "new_start", "new_start_at", "new_start_tz", "new_runs", "new_watch", "new_selector")
WATCH = {"The whole page": None, "A CSS selector": "css", "An XPath expression": "xpath", "The visible text": "text"}
PAGE_SIZE = 10


@st.cache_data(show_spinner=False)
def timezones() -> list[str]:
    return ["UTC", *sorted(z for z in available_timezones() if "/" in z and not z.startswith(("Etc/", "SystemV/")))]


def parse_headers(text: str) -> tuple[dict[str, str], str | None]:
    """'Name: value' per line → dict, or the problem with the first bad line."""
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            return {}, f"Header line {number} needs the form `Name: value`."
        headers[name.strip()] = value.strip()
    return headers, None


def prefect_link(order: OrderOut) -> str | None:
    if not order.deployment_id:
        return None
    return f"{ui.settings().prefect_ui_url.rstrip('/')}/deployments/deployment/{order.deployment_id}"


# --- the create form ----------------------------------------------------------------------------


def _reset_form_if_asked() -> None:
    if st.session_state.pop("new_order_reset", False):
        for key in FORM_KEYS:
            st.session_state.pop(key, None)
        st.session_state["new_order_key"] = str(uuid.uuid4())


def _schedule_inputs(tz_default: str) -> tuple[dict[str, Any], int | None]:
    """The schedule as the API wants it, and its interval in seconds when it has one."""
    kind = st.radio("Repeat", ["At a fixed interval", "On a cron schedule"], horizontal=True, key="new_kind")
    if kind == "At a fixed interval":
        every_col, unit_col = st.columns(2)
        every = every_col.number_input("Every", min_value=1, value=1, step=1, key="new_every")
        unit = unit_col.selectbox("Unit", list(UNITS), index=1, key="new_unit")
        seconds = int(every) * UNITS[unit]
        return {"kind": "interval", "every_seconds": seconds}, seconds
    cron_col, tz_col = st.columns(2)
    cron = cron_col.text_input("Cron expression", value="0 * * * *", key="new_cron",
                               help="Five fields: minute hour day-of-month month day-of-week, "
                                    "e.g. `30 9 * * 1-5` = 09:30 on weekdays.")
    zones = timezones()
    tz = tz_col.selectbox("Timezone", zones, index=zones.index(tz_default) if tz_default in zones else 0,
                          key="new_cron_tz")
    return {"kind": "cron", "cron": cron.strip(), "timezone": tz}, None


def _start_inputs(tz_default: str) -> datetime | None:
    start = st.radio("First run", ["As soon as possible", "At a date and time"], horizontal=True, key="new_start")
    if start == "As soon as possible":
        return None
    zones = timezones()
    at_col, tz_col = st.columns(2)
    local_now = datetime.now(ZoneInfo(tz_default) if tz_default in zones else UTC)
    default = (local_now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    at = at_col.datetime_input("Date and time", value=default, key="new_start_at", format="YYYY-MM-DD",
                               step=timedelta(minutes=5))
    tz = tz_col.selectbox("Timezone", zones, index=zones.index(tz_default) if tz_default in zones else 0,
                          key="new_start_tz")
    if at is None:
        return None
    return at.replace(tzinfo=ZoneInfo(tz))


def _cron_preview(schedule: dict[str, Any]) -> None:
    """The next runs of the cron expression as typed, or what is wrong with it (the API's own check)."""
    try:
        preview = ui.api().cron_preview(schedule["cron"], schedule["timezone"])
    except ApiError as e:
        st.warning(f"This cron expression will be refused: {e.detail}", icon="🕒")
        return
    tz = ui.viewer_timezone()
    st.caption("Next runs: " + ", ".join(fmt.when(t, tz) for t in preview.next_runs) + ".")


def _cost_preview(meta: MetaOut, balance: int, runs: int, interval: int | None, start: datetime | None) -> bool:
    """Shows what the order costs and when it runs; returns whether the balance covers it."""
    cost = runs * meta.price_per_run
    enough = cost <= balance
    with st.container(border=True, key="cost_preview"):
        cost_col, after_col = st.columns(2)
        cost_col.metric("Cost", fmt.coins(cost), help="Held in escrow at once; unused repetitions are refunded "
                                                      "if you cancel.")
        cost_col.caption(f"{runs:,} × {fmt.coins(meta.price_per_run)} per repetition")
        after_col.metric("Balance after", fmt.coins(balance - cost) if enough else "not enough coins")
        after_col.caption(f"You have {fmt.coins(balance)}.")
        if interval is not None:
            first = start or datetime.now(UTC)
            last = first + timedelta(seconds=interval * (runs - 1))
            tz = ui.viewer_timezone()
            st.caption(f"Runs {fmt.every(interval)} from {'now' if start is None else fmt.when(first, tz)} "
                       f"until about {fmt.when(last, tz)} ({fmt.duration((last - first).total_seconds())}).")
    if not enough:
        st.warning(f"This order costs {fmt.coins(cost)} but your balance is {fmt.coins(balance)}. "
                   "Top up on the Wallet page.", icon="🪙")
    return enough


def create_form(meta: MetaOut, balance: int) -> None:
    _reset_form_if_asked()
    st.session_state.setdefault("new_order_key", str(uuid.uuid4()))
    tz_default = getattr(ui.viewer_timezone(), "key", "UTC")

    url = st.text_input("Page URL", key="new_url", placeholder="https://example.com/prices",
                        help="http or https; the page must be reachable from the public internet.")
    method = st.radio("Method", ["GET", "HEAD", "POST"], horizontal=True, key="new_method")
    with st.expander("Request headers and body (optional)", expanded=method == "POST"):
        headers_text = st.text_area("Headers", key="new_headers", placeholder="Accept-Language: en\nX-Api-Key: …",
                                    help="One `Name: value` per line.", height=90)
        body = None
        if method == "POST":
            body = st.text_area("Body", key="new_body", placeholder='{"query": "…"}', height=90)
        else:
            st.caption("A body can be sent with the POST method.")
    with st.expander("Watch part of the page (optional)", icon=":material/difference:"):
        kind = WATCH[st.radio("Compare and keep", list(WATCH), horizontal=True, key="new_watch",
                              help="Each result is compared with the one before: a change gets a diff on the "
                                   "Results page. The part you pick is also kept next to every page.")]
        selector = ""
        if kind in ("css", "xpath"):
            selector = st.text_input("Selector", key="new_selector",
                                     placeholder=".price" if kind == "css" else "//h1/text()",
                                     help="`::text` / `::attr(href)` keep strings; an element keeps its text.")
    schedule, interval = _schedule_inputs(tz_default)
    if schedule["kind"] == "cron":
        _cron_preview(schedule)
    start = _start_inputs(tz_default)
    runs = int(st.number_input("Repetitions", min_value=1, max_value=meta.max_runs_cap, value=10, step=1,
                               key="new_runs", help=f"How many times the page is fetched (at most "
                                                    f"{meta.max_runs_cap:,})."))
    enough = _cost_preview(meta, balance, runs, interval, start)

    if not st.button("Place order", key="place_order", type="primary", icon=":material/add_task:",
                     disabled=not enough):
        return
    if not url.strip():
        st.error("Enter the URL of the page to fetch.")
        return
    headers, problem = parse_headers(headers_text)
    if problem:
        st.error(problem)
        return
    order: dict[str, Any] = {"url": url.strip(), "method": method, "headers": headers, "schedule": schedule,
                             "max_runs": runs}
    if body:
        order["body"] = body
    if kind is not None:
        order["extraction"] = {"kind": kind} | ({"selector": selector.strip()} if kind != "text" else {})
    if start is not None:
        order["start_at"] = start.isoformat()
    with ui.reporting("The order was not placed:"):
        created = ui.api().create_order(order, st.session_state["new_order_key"])
        tz = ui.viewer_timezone()
        ui.flash("success", f"Order placed: {created.max_runs:,} repetitions of {created.url}. "
                            f"{fmt.coins(created.cost)} are held in escrow; first run "
                            f"{fmt.when(created.next_due_at, tz)}.")
        st.session_state["new_order_reset"] = True
        st.rerun()


# --- the list -----------------------------------------------------------------------------------


def _act(order: OrderOut, action: str) -> None:
    api = ui.api()
    with ui.reporting(f"Could not {action} the order:"):
        if action == "pause":
            api.pause(order.id)
            ui.flash("success", f"Paused {order.url}. No new repetitions start until you resume it.")
        elif action == "resume":
            resumed = api.resume(order.id)
            ui.flash("success", f"Resumed {order.url}. Next run {fmt.when(resumed.next_due_at, ui.viewer_timezone())}.")
        elif action == "cancel":
            out = api.cancel(order.id)
            ui.flash("success", f"Cancelled {order.url}. {fmt.coins(out.refunded)} refunded to your wallet.")
            st.session_state.pop("confirm_cancel", None)
        st.rerun()


def _delivery(order: OrderOut) -> None:
    """The last result's status and the delivery latency over the order's newest results."""
    with ui.reporting("The results of this order could not be loaded:"):
        recent = ui.api().recent_results(order.id, delivery.RECENT) if order.runs_claimed else []
        delivery.metrics(order, delivery.Delivery(recent))


def change_form(order: OrderOut) -> None:
    """Change the URL, the interval or the number of repetitions of an active or paused order."""
    with st.expander("Change this order", icon=":material/edit:"), st.form(f"change_{order.id}"):
        url = st.text_input("Page URL to fetch", value=order.url, key=f"change_url_{order.id}")
        every = None
        if order.schedule.kind == "interval":
            every = st.number_input("Interval (seconds)", min_value=1, value=order.schedule.every_seconds,
                                    key=f"change_every_{order.id}")
        runs = st.number_input("Total repetitions", min_value=max(order.runs_claimed, 1), value=order.max_runs,
                               key=f"change_runs_{order.id}", help=f"At least the {order.runs_claimed:,} already "
                               "handed to the job queue. Fewer refund their price to your wallet; more take it.")
        st.caption("Changes apply from the next repetition not yet handed to the job queue.")
        if not st.form_submit_button("Save changes", icon=":material/save:"):
            return
    changes: dict[str, Any] = {}
    if url != order.url:
        changes["url"] = url
    if every is not None and order.schedule.kind == "interval" and every != order.schedule.every_seconds:
        changes["schedule"] = {"kind": "interval", "every_seconds": int(every)}
    if runs != order.max_runs:
        changes["max_runs"] = int(runs)
    if not changes:
        st.info("Nothing changed.")
        return
    with ui.reporting("The order was not changed:"):
        changed = ui.api().edit_order(order.id, changes)
        moved = (changed.max_runs - order.max_runs) * order.price_per_run
        money = (f" {fmt.coins(-moved)} refunded to your wallet." if moved < 0 else
                 f" {fmt.coins(moved)} more held in escrow." if moved > 0 else "")
        ui.flash("success", f"Changed {changed.url}: {fmt.schedule_text(changed.schedule)}, "
                            f"{changed.max_runs:,} repetitions.{money}")
        st.rerun()


def order_card(order: OrderOut) -> None:
    tz = ui.viewer_timezone()
    with st.container(border=True, key=f"order_{order.id}"):
        title_col, badge_col = st.columns([5, 1], vertical_alignment="center")
        title_col.markdown(f"**{order.url}**")
        watching = (f" · watching {order.extraction.kind.upper()} `{order.extraction.selector}`"
                    if order.extraction and order.extraction.selector else
                    " · watching the visible text" if order.extraction else "")
        title_col.caption(f"{order.method} · {fmt.schedule_text(order.schedule)} · placed "
                          f"{fmt.when(order.created_at, tz)} · order {fmt.short_id(order.id)}{watching}")
        badge_col.badge(order.status.value.capitalize(), color=fmt.STATUS_COLORS.get(order.status.value, "gray"))
        if order.late:
            badge_col.badge("Late", color="red", icon=":material/schedule:")
            st.warning(fmt.late_text(order.late), icon=":material/schedule:")

        done_col, left_col, next_col, cost_col = st.columns(4)
        counts = order.repetitions.model_dump()
        done = sum(counts[k] for k in fmt.SETTLED)
        done_col.metric("Repetitions done", f"{done:,} of {order.max_runs:,}",
                        help="Settled: delivered (the miner was paid), refunded or failed.")
        done_col.caption(fmt.repetition_parts(counts, fmt.SETTLED))
        left_col.metric("Repetitions left", f"{order.max_runs - done:,}", help="Still to come: scheduled, queued "
                        "(handed to the job queue shortly before they are due) or being fetched.")
        left_col.caption(fmt.repetition_parts(counts, fmt.TO_COME))
        if order.status.value == "active" and order.next_run_at:
            next_col.metric("Next run", fmt.relative(order.next_run_at), help=fmt.when(order.next_run_at, tz))
            next_col.caption(fmt.when(order.next_run_at, tz))
        else:
            next_col.metric("Next run", "—", help={"paused": "Resume the order to schedule more runs."}.get(
                order.status.value, "This order has no more runs."))
        cost_col.metric("Cost", fmt.coins(order.cost), help=f"{fmt.coins(order.price_per_run)} per repetition.")
        cost_col.caption(f"{fmt.coins(order.escrow_balance)} still in escrow")
        _delivery(order)

        if st.session_state.get("confirm_cancel") == order.id:
            refund = order.runs_left * order.price_per_run
            st.warning(f"Cancel this order? Its {order.runs_left:,} scheduled repetitions (not yet queued) are "
                       f"refunded (about {fmt.coins(refund)}). This cannot be undone.")
            yes_col, no_col, _ = st.columns([2, 2, 4])
            if yes_col.button("Yes, cancel and refund", key=f"cancel_yes_{order.id}", type="primary"):
                _act(order, "cancel")
            if no_col.button("Keep the order", key=f"cancel_no_{order.id}"):
                st.session_state.pop("confirm_cancel", None)
                st.rerun()
            return

        with st.container(horizontal=True):
            if order.status.value == "active":
                if st.button("Pause", key=f"pause_{order.id}", icon=":material/pause:"):
                    _act(order, "pause")
            elif order.status.value == "paused":
                if st.button("Resume", key=f"resume_{order.id}", icon=":material/play_arrow:"):
                    _act(order, "resume")
            if order.status.value in ("active", "paused"):
                if st.button("Cancel", key=f"cancel_{order.id}", icon=":material/cancel:"):
                    st.session_state["confirm_cancel"] = order.id
                    st.rerun()
            if st.button("Results", key=f"results_{order.id}", icon=":material/download:"):
                st.session_state["results_order"] = order.id
                st.switch_page("views/results.py")
            link = prefect_link(order)
            if link:
                st.link_button("Schedule in Prefect", link, icon=":material/open_in_new:")
            elif order.status.value in ("active", "paused"):
                st.caption("Scheduling is being set up…")
        if order.status.value in ("active", "paused"):
            change_form(order)


def main() -> None:
    api = ui.api()
    st.title("Orders")
    meta = api.meta()
    me = ui.current_user()

    limit = st.session_state.setdefault("orders_shown", PAGE_SIZE)
    orders, _ = api.orders(max_orders=limit + 1)
    more, orders = len(orders) > limit, orders[:limit]

    with st.expander("New order", expanded=not orders, icon=":material/add:"):
        create_form(meta, me.balance)

    st.subheader("Your orders")
    if not orders:
        st.info("No orders yet. Place your first one above.")
        return
    for order in orders:
        order_card(order)
    if more and st.button("Show more orders", key="orders_more"):
        st.session_state["orders_shown"] = limit + PAGE_SIZE
        st.rerun()


main()
