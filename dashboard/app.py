"""The dashboard's entry script, served by dashboard/server.py (see dashboard.launch)."""

import streamlit as st

from dashboard import ui

VIEWS = "views"

st.set_page_config(page_title="crawlcoin", page_icon="🪙", layout="wide", initial_sidebar_state="expanded")
st.session_state.pop("_me_run", None)  # /me is fetched at most once per run

if ui.signed_in():
    navigation = st.navigation({
        "Customer": [
            st.Page(f"{VIEWS}/orders.py", title="Orders", icon=":material/schedule:", url_path="orders", default=True),
            st.Page(f"{VIEWS}/results.py", title="Results", icon=":material/download:", url_path="results"),
        ],
        "Volunteer": [
            st.Page(f"{VIEWS}/mining.py", title="Mining", icon=":material/construction:", url_path="mining"),
        ],
        "Account": [
            st.Page(f"{VIEWS}/wallet.py", title="Wallet", icon=":material/account_balance_wallet:", url_path="wallet"),
        ],
    })
else:
    navigation = st.navigation(
        [st.Page(f"{VIEWS}/account.py", title="Sign in", icon=":material/login:", url_path="sign-in")],
        position="hidden",
    )

with ui.guard():
    ui.sidebar()
    ui.show_flashes()
    navigation.run()
