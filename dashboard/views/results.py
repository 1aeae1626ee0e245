"""Per order: how far its repetitions got, and how to receive every result with the result client."""

import pandas as pd
import streamlit as st

from core.schemas import OrderOut
from dashboard import format as fmt
from dashboard import ui

DEFAULT_OUT = "crawlcoin-results"


def repetitions_frame(order: OrderOut) -> pd.DataFrame:
    """The repetitions of an order grouped by state, as far as the order itself tells."""
    tz = ui.viewer_timezone()
    rows: list[dict[str, str]] = []
    if order.runs_claimed:
        rows.append({"Repetitions": _span(1, order.runs_claimed), "State": "Started",
                     "When": "results arrive through the result client"})
    first_left = order.runs_claimed + 1
    if order.runs_left:
        if order.status.value == "cancelled":
            rows.append({"Repetitions": _span(first_left, order.max_runs), "State": "Refunded (order cancelled)",
                         "When": "—"})
        elif order.status.value == "paused":
            rows.append({"Repetitions": _span(first_left, order.max_runs), "State": "Paused", "When": "after resume"})
        else:
            rows.append({"Repetitions": _span(first_left, first_left), "State": "Next",
                         "When": fmt.when(order.next_due_at, tz)})
            if order.runs_left > 1:
                rows.append({"Repetitions": _span(first_left + 1, order.max_runs), "State": "Waiting",
                             "When": f"then {fmt.schedule_text(order.schedule).replace('`', '')}"})
    return pd.DataFrame(rows, columns=["Repetitions", "State", "When"])


def _span(first: int, last: int) -> str:
    return f"#{first:,}" if first == last else f"#{first:,} – #{last:,}"


def progress(order: OrderOut) -> None:
    tz = ui.viewer_timezone()
    status_col, done_col, left_col, next_col = st.columns(4)
    status_col.metric("Status", order.status.value.capitalize())
    done_col.metric("Repetitions done", f"{order.runs_claimed:,} of {order.max_runs:,}")
    left_col.metric("Repetitions left", f"{order.runs_left:,}")
    next_col.metric("Next run", fmt.relative(order.next_due_at) if order.status.value == "active"
                    and order.next_due_at else "—")
    st.progress(order.runs_claimed / order.max_runs if order.max_runs else 0.0,
                text=f"{order.runs_claimed:,} of {order.max_runs:,} repetitions started")
    st.dataframe(repetitions_frame(order), hide_index=True, width="stretch")
    st.caption(f"{order.method} {order.url} · {fmt.schedule_text(order.schedule)} · first run "
               f"{fmt.when(order.start_at, tz)} · order id `{order.id}`")


def result_client(order: OrderOut) -> None:
    st.subheader("Receive the results")
    st.markdown("The result client receives every result of this order, also the ones delivered while it was "
                "offline, and writes each one as files (`<n>-<time>.json` with status and headers, and "
                "`.body` with the page) into a folder on your computer.")
    out = st.text_input("Folder on your computer", value=DEFAULT_OUT, key=f"out_{order.id}")
    server = ui.settings().results_url
    created = st.session_state.setdefault("results_tokens", {}).get(order.id)
    if created:
        st.success("Results token created. Copy the command now: the token is shown only this once.",
                   icon=":material/key:")
        st.code(fmt.results_command(server, created, order.id, out or DEFAULT_OUT), language="bash", wrap_lines=True)
    else:
        st.code(fmt.results_command(server, "<TOKEN>", order.id, out or DEFAULT_OUT), language="bash", wrap_lines=True)
        if st.button("Create a results token for this order", key=f"results_token_{order.id}", type="primary",
                     icon=":material/key:"):
            with ui.reporting("No token was created:"):
                token = ui.api().create_token(f"results {fmt.short_id(order.id)}", ["results"], order.id)
                st.session_state["results_tokens"][order.id] = token.token
                st.rerun()
    st.caption("Install the client with `pip install 'crawlcoin[results]'`. The token can read the results of "
               "this order only.")


def existing_tokens(order: OrderOut) -> None:
    tokens = [t for t in ui.api().tokens() if t.order_id == order.id and "results" in t.scopes and not t.revoked_at]
    if not tokens:
        return
    tz = ui.viewer_timezone()
    with st.expander(f"Results tokens of this order ({len(tokens)})"):
        for token in tokens:
            name_col, button_col = st.columns([4, 1], vertical_alignment="center")
            name_col.markdown(f"**{token.name}** · created {fmt.when(token.created_at, tz)}")
            if button_col.button("Revoke", key=f"revoke_{token.id}"):
                with ui.reporting("The token was not revoked:"):
                    ui.api().revoke_token(token.id)
                    st.session_state.get("results_tokens", {}).pop(order.id, None)
                    ui.flash("success", f"Token “{token.name}” revoked: result clients using it are refused now.")
                    st.rerun()


def main() -> None:
    st.title("Results")
    orders, _ = ui.api().orders()
    if not orders:
        st.info("You have no orders yet. Place one on the Orders page; its results will be here.")
        st.page_link("views/orders.py", label="Go to Orders", icon=":material/schedule:")
        return
    by_id = {o.id: o for o in orders}
    ids = list(by_id)
    wanted = st.session_state.pop("results_order", None)
    if wanted in by_id:
        st.session_state["results_pick"] = wanted
    elif st.session_state.get("results_pick") not in by_id:
        st.session_state["results_pick"] = ids[0]
    order_id = st.selectbox("Order", ids, key="results_pick",
                            format_func=lambda i: f"{by_id[i].url} · {by_id[i].status.value} · {fmt.short_id(i)}")
    order = by_id[order_id]
    progress(order)
    result_client(order)
    existing_tokens(order)


main()
