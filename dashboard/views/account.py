"""Sign in, create an account, and enrol an authenticator app (TOTP)."""

import base64
import re

import streamlit as st

from core.schemas import TotpEnrolment
from dashboard import format as fmt
from dashboard import ui
from dashboard.client import ApiError, ApiUnreachable

CODE = re.compile(r"^\d{6}$")


def _qr_bytes(data_uri: str) -> bytes | None:
    head, _, payload = data_uri.partition(",")
    if not head.startswith("data:image/png;base64"):
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:
        return None


def _code_problem(code: str) -> str | None:
    if not CODE.match(code.strip()):
        return "Enter the 6-digit code your authenticator app shows right now."
    return None


def _auth_error(e: ApiError) -> None:
    """Wrong password, wrong code, throttling: say what happened and what to do."""
    if e.status == 429:
        wait = fmt.duration(e.retry_after) if e.retry_after else "a while"
        st.error(f"**Too many failed attempts.** {ui.sentence(e.detail)} "
                 f"For your safety, sign-in is paused: please wait {wait} before trying again.", icon="⏳")
    elif e.status == 401 and "code" in e.detail:
        st.error(f"{ui.sentence(e.detail)} Check that your phone's clock is right and enter the code "
                 "currently shown.", icon="🔢")
    else:
        ui.show_error(e)


def _start_enrolment(username: str, password: str, enrolment: TotpEnrolment) -> None:
    # The password is kept only until the code is confirmed: the API asks for it again then.
    st.session_state["enrolment"] = {"username": username, "password": password, "secret": enrolment.secret,
                                     "otpauth_uri": enrolment.otpauth_uri, "qr_png": enrolment.qr_png}


def sign_in_form() -> None:
    with st.form("sign_in", border=False):
        username = st.text_input("Username", key="signin_username", autocomplete="username")
        password = st.text_input("Password", type="password", key="signin_password", autocomplete="current-password")
        code = st.text_input("Two-factor code", key="signin_code", max_chars=6, placeholder="123456",
                             autocomplete="one-time-code", help="The 6-digit code from your authenticator app.")
        submitted = st.form_submit_button("Sign in", type="primary", width="stretch")
    if submitted:
        st.session_state.pop("needs_enrolment", None)
        if not username or not password:
            st.error("Enter your username and password.")
            return
        if problem := _code_problem(code):
            st.error(problem)
            return
        try:
            session = ui.api().login(username.strip(), password, code.strip())
        except ApiUnreachable:
            raise
        except ApiError as e:
            if e.status == 403 and "enrolment" in e.detail:
                st.session_state["needs_enrolment"] = True
            else:
                _auth_error(e)
                return
        else:
            ui.sign_in(session, username.strip())
            ui.flash("success", f"Welcome back, {username.strip()}!")
            st.rerun()
    if st.session_state.get("needs_enrolment"):
        st.warning("Two-factor sign-in is not set up for this account yet. Set it up now to finish "
                   "creating your account.")
        if st.button("Set up two-factor sign-in", key="resume_enrolment"):
            username = st.session_state.get("signin_username", "").strip()
            password = st.session_state.get("signin_password", "")
            try:
                enrolment = ui.api().totp_setup(username, password)
            except ApiUnreachable:
                raise
            except ApiError as e:
                _auth_error(e)
                return
            st.session_state.pop("needs_enrolment", None)
            _start_enrolment(username, password, enrolment)
            st.rerun()


def register_form() -> None:
    min_length = ui.settings().password_min_length
    with st.form("register", border=False):
        username = st.text_input("Choose a username", key="register_username", autocomplete="username",
                                 help="3 to 32 letters, digits, '.', '_' or '-'.")
        password = st.text_input("Choose a password", type="password", key="register_password",
                                 autocomplete="new-password", help=f"At least {min_length} characters.")
        repeat = st.text_input("Repeat the password", type="password", key="register_repeat",
                               autocomplete="new-password")
        submitted = st.form_submit_button("Create account", type="primary", width="stretch")
    if not submitted:
        return
    if not username or not password:
        st.error("Choose a username and a password.")
        return
    if password != repeat:
        st.error("The two passwords differ. Type the same password twice.")
        return
    try:
        registered = ui.api().register(username.strip(), password)
    except ApiUnreachable:
        raise
    except ApiError as e:
        ui.show_error(e, "Could not create the account:")
        return
    _start_enrolment(registered.user.username, password, registered.totp)
    st.rerun()


def enrolment_step() -> None:
    enrolment = st.session_state["enrolment"]
    st.subheader("Set up two-factor sign-in")
    st.markdown(f"Account **{enrolment['username']}** is created. Every sign-in asks for a code from an "
                "authenticator app on your phone (Aegis, Google Authenticator, 1Password, …).")
    st.markdown("**1.** Scan this QR code with your authenticator app:")
    qr = _qr_bytes(enrolment["qr_png"])
    if qr:
        st.image(qr, width=220)
    st.markdown("Can't scan it? Enter this key by hand (time-based, 6 digits, every 30 seconds):")
    st.code(enrolment["secret"], language=None, wrap_lines=True)
    st.markdown(f"Or [open it in an authenticator app on this device]({enrolment['otpauth_uri']}).")
    st.markdown("**2.** Enter the code the app now shows:")
    with st.form("confirm_totp", border=False):
        code = st.text_input("Two-factor code", key="enrol_code", max_chars=6, placeholder="123456",
                             autocomplete="one-time-code")
        submitted = st.form_submit_button("Confirm and sign in", type="primary", width="stretch")
    if submitted:
        if problem := _code_problem(code):
            st.error(problem)
        else:
            try:
                session = ui.api().totp_confirm(enrolment["username"], enrolment["password"], code.strip())
            except ApiUnreachable:
                raise
            except ApiError as e:
                _auth_error(e)
            else:
                ui.sign_in(session, enrolment["username"])
                ui.flash("success", f"Welcome, {enrolment['username']}! Two-factor sign-in is set up.")
                st.rerun()
    if st.button("Start over", key="enrol_cancel", type="tertiary"):
        st.session_state.pop("enrolment", None)
        st.rerun()


def main() -> None:
    _, middle, _ = st.columns([1, 2, 1])
    with middle:
        st.title("crawlcoin")
        st.markdown("Recurring web scraping, paid in coins: **order** a page fetched on a schedule, "
                    "or **mine** by fetching pages for others and earn coins.")
        meta = ui.api().meta()
        if "enrolment" in st.session_state:
            enrolment_step()
            return
        sign_in_tab, register_tab = st.tabs(["Sign in", "Create account"])
        with sign_in_tab:
            sign_in_form()
        with register_tab:
            register_form()
        if meta.mode != "production":
            st.caption(f"This installation runs in {meta.mode} mode: accounts and coins are for trying things out.")


main()
