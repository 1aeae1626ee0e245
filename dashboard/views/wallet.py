"""Balance, test coins (where offered) and the ledger: every coin movement with a chart."""

import uuid

import altair as alt
import pandas as pd
import streamlit as st

from core.schemas import LedgerEntryOut
from dashboard import charts, ui
from dashboard import format as fmt


def _history_frame(entries: list[LedgerEntryOut]) -> pd.DataFrame:
    tz = ui.viewer_timezone()
    return pd.DataFrame({
        "When": [fmt.when(e.created_at, tz) for e in entries],
        "What": [fmt.LEDGER_KINDS.get(e.kind, e.kind.capitalize()) for e in entries],
        "Amount": [fmt.signed_coins(e.delta) for e in entries],
        "Balance after": [e.balance_after for e in entries],
        "Reference": [e.reference or "" for e in entries],
    })


def balance_chart(entries: list[LedgerEntryOut]) -> alt.Chart:
    """Balance over time as steps, starting from the balance before the oldest entry shown."""
    oldest_first = list(reversed(entries))
    first = oldest_first[0]
    times = [first.created_at] + [e.created_at for e in oldest_first]
    balances = [first.balance_after - first.delta] + [e.balance_after for e in oldest_first]
    return charts.steps(times, balances, "Balance (coins)")


def faucet(max_amount: int, mode: str) -> None:
    with st.container(border=True):
        st.markdown("**Test coins**")
        # The same words as the sign-in page, with the mode the API reports (dev or test).
        st.caption(f"This installation runs in {mode} mode: take free coins to try ordering "
                   f"(at most {fmt.coins(max_amount)} at a time).")
        amount_col, button_col = st.columns(2, vertical_alignment="bottom")
        # No max_value: a browser drops a typed value above it and keeps the old one, silently.
        amount = amount_col.number_input("Amount", min_value=1, value=min(100, max_amount), step=10,
                                         key="faucet_amount")
        if button_col.button("Get test coins", key="faucet", type="primary", icon=":material/savings:",
                             width="stretch"):
            if amount > max_amount:
                st.error(f"No test coins: {int(amount):,} is more than the {fmt.coins(max_amount)} you can take "
                         "at a time.")
                return
            with ui.reporting("No test coins:"):
                wallet = ui.api().faucet(int(amount), str(uuid.uuid4()))
                ui.flash("success", f"{fmt.coins(int(amount))} added. Your balance is now {fmt.coins(wallet.balance)}.")
                st.rerun()


def main() -> None:
    api = ui.api()
    st.title("Wallet")
    meta = api.meta()
    me = ui.current_user()
    orders, _ = api.orders()
    held = sum(o.escrow_balance for o in orders)

    balance_col, held_col, faucet_col = st.columns([1, 1, 2])
    balance_col.metric("Balance", fmt.coins(me.balance), help="Coins you can spend on new orders.")
    held_col.metric("Held for your orders", fmt.coins(held),
                    help="Coins in escrow: paid to miners as your orders' pages are fetched, "
                         "refunded for repetitions that are cancelled or cannot run.")
    if meta.faucet_enabled and meta.faucet_max_amount > 0:
        with faucet_col:
            faucet(meta.faucet_max_amount, meta.mode)

    st.subheader("History")
    entries, truncated = api.ledger()
    if not entries:
        st.info("No coin movements yet. Coins you receive and spend will be listed here.")
        return
    st.altair_chart(balance_chart(entries), width="stretch")
    st.dataframe(
        _history_frame(entries),
        hide_index=True,
        width="stretch",
        column_config={"Balance after": st.column_config.NumberColumn(format="%d")},
    )
    if truncated:
        st.caption(f"Showing your latest {len(entries)} movements.")


main()
