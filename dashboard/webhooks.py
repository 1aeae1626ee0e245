"""An order's webhooks on the Results page: create one (its secret shown once), its delivery log, delete it."""

import pandas as pd
import streamlit as st

from core.schemas import OrderOut, WebhookDeliveryOut
from dashboard import format as fmt
from dashboard import ui

EVENTS = {"change": "Only when it changes", "result": "Every result"}
LOG_ROWS = 50


def log_frame(deliveries: list[WebhookDeliveryOut]) -> pd.DataFrame:
    tz = ui.viewer_timezone()
    rows = [{"Repetition": f"#{d.n}", "Event": d.event, "State": d.state, "Attempts": d.attempts,
             "Last answer": (str(d.last_status) if d.last_status is not None else "—") + (
                 f" · {d.last_error}" if d.last_error else ""),
             "Last try": fmt.when(d.last_attempt_at, tz),
             "Next try": fmt.when(d.next_attempt_at, tz) if d.state == "pending" else "—"} for d in deliveries]
    return pd.DataFrame(rows, columns=["Repetition", "Event", "State", "Attempts", "Last answer", "Last try",
                                       "Next try"])


def create_form(order: OrderOut) -> None:
    secret = st.session_state.get("webhook_secret")
    if secret:
        st.success("Webhook created. Copy its signing secret now: it is shown only this once.",
                   icon=":material/key:")
        st.code(secret, language=None)
    with st.form(f"webhook_{order.id}", clear_on_submit=True):
        url = st.text_input("Webhook URL", placeholder="https://example.com/crawlcoin-hook")
        event = st.radio("Notify", list(EVENTS), format_func=EVENTS.__getitem__, horizontal=True)
        scope = st.radio("For", ["order", "all"], horizontal=True,
                         format_func={"order": "This order", "all": "All my orders"}.__getitem__)
        if st.form_submit_button("Add webhook", icon=":material/webhook:"):
            with ui.reporting("The webhook was not created:"):
                created = ui.api().create_webhook(url, event, order.id if scope == "order" else None)
                st.session_state["webhook_secret"] = created.secret
                st.rerun()


def section(order: OrderOut) -> None:
    st.subheader("Webhooks")
    st.caption("Each change (or every result) of the order is POSTed as JSON to your URL, signed with HMAC-SHA256 "
               "(header `Crawlcoin-Signature: t=…,v1=…` over the time and the body), and retried with growing waits "
               "until it answers 2xx; `Crawlcoin-Delivery` is the same on every attempt.")
    hooks = [w for w in ui.api().webhooks() if w.order_id in (None, order.id)]
    tz = ui.viewer_timezone()
    for hook in hooks:
        scope = "this order" if hook.order_id else "all your orders"
        with st.expander(f"{hook.url} · {EVENTS[hook.event].lower()} · {scope}", expanded=True):
            page = ui.api().webhook_deliveries(hook.id, LOG_ROWS)
            mine = [d for d in page.items if d.order_id == order.id]
            if mine:
                st.dataframe(log_frame(mine), hide_index=True, width="stretch")
            else:
                st.caption("Nothing sent for this order yet.")
            st.caption(f"Created {fmt.when(hook.created_at, tz)} · webhook id `{hook.id}`")
            if st.button("Delete webhook", key=f"delete_webhook_{hook.id}"):
                with ui.reporting("The webhook was not deleted:"):
                    ui.api().delete_webhook(hook.id)
                    ui.flash("success", f"Webhook to {hook.url} deleted: nothing more is sent to it.")
                    st.rerun()
    create_form(order)
