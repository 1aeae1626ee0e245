"""For volunteers: mining tokens with the command to run, and what mining has earned."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from core.schemas import LedgerEntryOut, ReputationOut, TokenOut
from dashboard import charts, ui
from dashboard import format as fmt


def rewards(entries: list[LedgerEntryOut]) -> list[LedgerEntryOut]:
    """Pay for delivered pages and fees for checking other miners' pages."""
    return [e for e in entries if e.kind in ("reward", "validation")]


STANDING = {
    "new": "New: every result is checked by another miner before it is paid. Ten checks in a row that agree "
           "make you trusted.",
    "trusted": "Trusted: a few of your results are checked, at random; the rest are paid at once.",
    "suspect": "Suspect: another miner's fetch outvoted one of yours, so every result is checked again until your "
               "reputation is back.",
    "barred": "Barred: your results were outvoted too often. This account gets no more jobs.",
}


def standing(rep: ReputationOut) -> None:
    st.subheader("Reputation")
    score_col, agreed_col, outvoted_col, checked_col = st.columns(4)
    score_col.metric("Reputation", f"{rep.reputation:.2f}", help="How often other miners' fetches of the same pages "
                                                                 "agreed with yours (a moving average, 0 to 1).")
    agreed_col.metric("Checks agreed", f"{rep.agreed:,}")
    outvoted_col.metric("Outvoted", f"{rep.outvoted:,}", help=f"{rep.strikes_left} more and the account is barred.")
    checked_col.metric("Results checked", f"{rep.checked_share:.0%}")
    (st.error if rep.standing == "barred" else st.warning if rep.standing == "suspect" else st.info)(
        STANDING.get(rep.standing, rep.standing))


def earnings(entries: list[LedgerEntryOut]) -> None:
    st.subheader("Earnings")
    paid = rewards(entries)
    day_ago = datetime.now(UTC) - timedelta(days=1)
    total_col, pages_col, day_col = st.columns(3)
    total_col.metric("Earned in total", fmt.coins(sum(e.delta for e in paid)))
    pages_col.metric("Pages delivered", f"{sum(e.kind == 'reward' for e in paid):,}",
                     help="Pages of yours that customers received; checks of other miners' pages are paid too.")
    day_col.metric("Earned in the last 24 hours", fmt.coins(sum(e.delta for e in paid if e.created_at >= day_ago)))
    if not paid:
        st.info("No earnings yet. Start the mining client with a token from above: every page it delivers "
                "earns coins.")
        return
    oldest_first = list(reversed(paid))
    running, totals = 0, []
    for e in oldest_first:
        running += e.delta
        totals.append(running)
    chart_col, daily_col = st.columns(2)
    with chart_col:
        st.markdown("**Earned over time**")
        st.altair_chart(charts.steps([e.created_at for e in oldest_first], totals, "Coins earned"), width="stretch")
    with daily_col:
        st.markdown("**Per day**")
        st.altair_chart(charts.daily_totals([e.created_at for e in oldest_first], [e.delta for e in oldest_first],
                                            "Coins"), width="stretch")
    tz = ui.viewer_timezone()
    st.dataframe(pd.DataFrame({
        "When": [fmt.when(e.created_at, tz) for e in paid],
        "For": [("checking " if e.kind == "validation" else "") + (e.reference or "") for e in paid],
        "Earned": [fmt.signed_coins(e.delta) for e in paid],
    }), hide_index=True, width="stretch")


def new_token(tokens: list[TokenOut], mode: str) -> None:
    server = ui.settings().mining_url
    local = mode == "dev"  # a stack on one machine: the pages ordered are often on it too
    created = st.session_state.get("mine_token")
    if created:
        st.success(f"Mining token “{created['name']}” created. Copy the command now: the token is shown only this "
                   "once.", icon=":material/key:")
        st.code(fmt.mine_command(server, created["token"], local), language="bash", wrap_lines=True)
        if st.button("Done, I copied it", key="mine_token_done"):
            st.session_state.pop("mine_token", None)
            st.rerun()
        return
    name_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
    name = name_col.text_input("Name of the computer that will mine", value=f"miner {len(tokens) + 1}",
                               max_chars=64, key="mine_token_name")
    if button_col.button("Create mining token", key="mine_token_create", type="primary", icon=":material/key:",
                         width="stretch"):
        with ui.reporting("No token was created:"):
            token = ui.api().create_token(name.strip() or "miner", ["mine"])
            st.session_state["mine_token"] = {"name": token.name, "token": token.token}
            st.rerun()
    st.code(fmt.mine_command(server, "<TOKEN>", local), language="bash", wrap_lines=True)
    if local:
        st.caption("This installation runs in dev mode, so the command has `--allow-private-targets`: the miner "
                   "may fetch pages on this machine and its network, as local test orders need. Leave it out when "
                   "you mine for a public server.")


def token_list(tokens: list[TokenOut]) -> None:
    if not tokens:
        return
    tz = ui.viewer_timezone()
    st.markdown("**Your mining tokens**")
    for token in tokens:
        with st.container(border=True, key=f"mine_{token.id}"):
            name_col, button_col = st.columns([4, 1], vertical_alignment="center")
            name_col.markdown(f"**{token.name}**  \ncreated {fmt.when(token.created_at, tz)}")
            if button_col.button("Revoke", key=f"revoke_{token.id}", icon=":material/block:"):
                with ui.reporting("The token was not revoked:"):
                    ui.api().revoke_token(token.id)
                    ui.flash("success", f"Token “{token.name}” revoked: a miner using it is disconnected and refused.")
                    st.rerun()


def main() -> None:
    api = ui.api()
    st.title("Mining")
    meta = api.meta()
    st.markdown(f"Lend your computer's connection to crawlcoin: the mining client fetches pages for customers and "
                f"earns **{fmt.coins(meta.price_per_run)}** for every page it delivers. Install it with "
                "`pip install 'crawlcoin[miner]'` and start it with a mining token.")
    tokens = [t for t in api.tokens() if "mine" in t.scopes and t.revoked_at is None]
    new_token(tokens, meta.mode)
    token_list(tokens)
    standing(api.reputation())
    entries, _ = api.ledger()
    earnings(entries)


main()
