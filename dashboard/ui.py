"""What every page shares: settings, the API client of this browser session, sign-in state,
one-shot messages, and turning API errors into readable messages."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import tzinfo
from typing import Literal

import httpx
import streamlit as st

from core.schemas import MeOut, SessionOut
from core.settings import Settings
from dashboard import format as fmt
from dashboard.client import Api, ApiError, ApiUnreachable, SessionExpired, new_http

log = logging.getLogger("crawlcoin.dashboard")

FlashKind = Literal["success", "info", "warning", "error"]

# Human wording for the fields the API names in validation messages.
FIELD_LABELS = {
    "url": "URL",
    "method": "Method",
    "headers": "Headers",
    "body": "Body",
    "schedule": "Schedule",
    "schedule.every_seconds": "Interval",
    "schedule.interval.every_seconds": "Interval",
    "schedule.cron": "Cron expression",
    "schedule.cron.cron": "Cron expression",
    "schedule.timezone": "Timezone",
    "schedule.cron.timezone": "Timezone",
    "start_at": "Start",
    "max_runs": "Repetitions",
    "username": "Username",
    "password": "Password",
    "code": "Code",
    "amount": "Amount",
    "name": "Name",
}

PATTERN_HINTS = {
    "username": "use 3 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit",
    "code": "enter the 6 digits your authenticator app shows",
}

ACRONYMS = {"url", "api", "http", "https", "totp"}


def settings() -> Settings:
    return Settings()


@st.cache_resource(show_spinner=False)
def _http(base_url: str) -> httpx.Client:
    return new_http(base_url)


def api() -> Api:
    session = st.session_state.get("session")
    return Api(_http(settings().resolved_api_url), session["token"] if session else None, forwarded_for())


def forwarded_for() -> str | None:
    """The X-Forwarded-For to send the API: the chain the browser's request came with, plus the address it came
    from, as any proxy does. The API throttles failed sign-ins per user address, not per dashboard."""
    try:
        peer = st.context.ip_address
        incoming = st.context.headers.get_all("X-Forwarded-For")
    except Exception:  # no browser context (e.g. a bare script run)
        return None
    peer = peer if isinstance(peer, str) and peer else "127.0.0.1"  # Streamlit hides loopback peers
    headers = incoming if isinstance(incoming, list) else []
    chain = [entry.strip() for header in headers if isinstance(header, str) for entry in header.split(",")]
    return ", ".join([*[entry for entry in chain if entry][-8:], peer])  # the API reads it from the right


def viewer_timezone() -> tzinfo:
    """The browser's timezone when Streamlit knows it, else UTC."""
    try:
        name = st.context.timezone
    except Exception:  # no browser context (e.g. a bare script run)
        name = None
    return fmt.timezone_of(name)


# --- sign-in state ------------------------------------------------------------------------


def signed_in() -> bool:
    return "session" in st.session_state


def sign_in(session: SessionOut, username: str) -> None:
    st.session_state["session"] = {"token": session.access_token, "username": username,
                                   "expires_at": session.expires_at}
    st.session_state.pop("enrolment", None)


def sign_out(message: str | None = None, kind: FlashKind = "info") -> None:
    """Forget the session of this browser tab (the caller ends it at the API if it still can)."""
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    if message:
        flash(kind, message)


def username() -> str:
    return st.session_state["session"]["username"]


# --- messages -----------------------------------------------------------------------------


def flash(kind: FlashKind, text: str) -> None:
    """A message shown once, at the top of the next page drawn (survives st.rerun)."""
    st.session_state.setdefault("flash", []).append((kind, text))


def show_flashes() -> None:
    for kind, text in st.session_state.pop("flash", []):
        getattr(st, kind)(text)


def sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    first, _, rest = text.partition(" ")
    if first.lower() in ACRONYMS:
        text = " ".join(filter(None, [first.upper(), rest]))
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def field_label(loc: list[str]) -> str:
    parts = [p for p in loc if p != "body"]
    key = ".".join(parts)
    return FIELD_LABELS.get(key) or FIELD_LABELS.get(parts[0] if parts else "", key or "Request")


def error_lines(e: ApiError) -> list[str]:
    """One readable line per problem the API reported."""
    if e.status == 422 and e.errors:
        lines = []
        for err in e.errors:
            loc = [str(p) for p in err.get("loc", [])]
            msg = PATTERN_HINTS.get(loc[-1] if loc else "") if err.get("type") == "string_pattern_mismatch" else None
            msg = msg or str(err.get("msg", "")).removeprefix("Value error, ")
            lines.append(f"**{field_label(loc)}:** {msg}")
        return lines
    if e.status == 429:
        wait = f" Please wait {fmt.duration(e.retry_after)} before trying again." if e.retry_after else ""
        return [sentence(e.detail) + wait]
    return [sentence(e.detail)]


def show_error(e: ApiError, prefix: str = "") -> None:
    lines = error_lines(e)
    head = f"{prefix} " if prefix else ""
    if len(lines) == 1:
        st.error(head + lines[0], icon="⚠️")
    else:
        st.error(head + "\n".join(f"\n- {line}" for line in lines), icon="⚠️")


def unreachable_banner(e: ApiUnreachable) -> None:
    st.error(
        f"**The crawlcoin service cannot be reached right now.** {sentence(e.detail)} "
        "Your orders keep running; reload this page in a moment. "
        "(Operators: is the API up, and is `CRAWLCOIN_API_URL` right?)",
        icon="🔌",
    )


class Outcome:
    error: ApiError | None = None


@contextmanager
def reporting(prefix: str = "") -> Iterator[Outcome]:
    """Around one action: an API refusal is shown right there; lost sessions and outages go to `guard`."""
    outcome = Outcome()
    try:
        yield outcome
    except (SessionExpired, ApiUnreachable):
        raise
    except ApiError as e:
        outcome.error = e
        show_error(e, prefix)


@contextmanager
def guard() -> Iterator[None]:
    """Around a whole page: expired sessions go back to sign-in, every other error becomes a message."""
    try:
        yield
    except SessionExpired:
        sign_out("Your session has ended. Please sign in again.", "warning")
        st.rerun()
    except ApiUnreachable as e:
        unreachable_banner(e)
    except ApiError as e:
        show_error(e)
    except Exception:
        log.exception("dashboard page failed")
        st.error("Something went wrong while drawing this page. Reload the page to try again.", icon="⚠️")


# --- shared page parts ----------------------------------------------------------------------


def current_user() -> MeOut:
    """The signed-in user, fetched once per script run (it also proves the session is alive)."""
    cached = st.session_state.get("_me_run")
    if cached is not None:
        return cached
    me = api().me()
    st.session_state["_me_run"] = me
    return me


def sidebar() -> None:
    if not signed_in():
        return
    with st.sidebar:
        me = current_user()
        st.markdown(f"Signed in as **{me.username}**")
        st.metric("Balance", fmt.coins(me.balance))
        if st.button("Sign out", key="sign_out", icon=":material/logout:", width="stretch"):
            try:
                api().logout()
            except (SessionExpired, ApiUnreachable):
                pass  # the local session ends either way
            sign_out("You are signed out.", "success")
            st.rerun()
