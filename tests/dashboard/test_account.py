"""Sign-up with TOTP enrolment, sign-in, sign-out, and what the user reads when something is wrong."""

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from streamlit.testing.v1 import AppTest

from core import security
from core.settings import Settings
from tests.dashboard.conftest import alerts, button, texts, widget
from tests.helpers import PASSWORD, ApiClient, fresh_totp_step


def register(at: AppTest, username: str, password: str = PASSWORD, repeat: str | None = None) -> None:
    widget(at.text_input, "Choose a username").input(username)
    widget(at.text_input, "Choose a password").input(password)
    widget(at.text_input, "Repeat the password").input(password if repeat is None else repeat)
    button(at, "Create account").click()
    at.run()


def sign_in(at: AppTest, username: str, code: str, password: str = PASSWORD) -> None:
    widget(at.text_input, "Username").input(username)
    widget(at.text_input, "Password").input(password)
    widget(at.text_input, "Two-factor code").input(code)
    button(at, "Sign in").click()
    at.run()


def test_sign_up_enrol_sign_out_and_sign_in(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    at = dashboard()
    assert "Recurring web scraping" in texts(at)
    username = f"ada-{uuid.uuid4().hex[:6]}"
    register(at, username)

    assert "Set up two-factor sign-in" in texts(at)
    assert len(at.image) == 1, "the QR code is shown"
    secret = at.code[0].value
    assert len(secret) >= 16 and secret.isalnum()
    totp = pyotp.TOTP(secret)

    wrong = f"{(int(totp.now()) + 500_000) % 1_000_000:06d}"
    widget(at.text_input, "Two-factor code").input(wrong)
    button(at, "Confirm and sign in").click()
    at.run()
    assert any("Wrong username, password or two-factor code" in e for e in alerts(at, "error"))

    fresh_totp_step(10)
    widget(at.text_input, "Two-factor code").input(totp.at(time.time() - 30))
    button(at, "Confirm and sign in").click()
    at.run()
    assert f"Welcome, {username}! Two-factor sign-in is set up." in alerts(at, "success")
    assert f"Signed in as **{username}**" in texts(at)
    assert at.title[0].value == "Orders"

    button(at, "Sign out").click()
    at.run()
    assert "You are signed out." in alerts(at, "success")
    assert api.get("/me", headers={"Authorization": "Bearer x"}).status_code == 401

    sign_in(at, username, totp.now())
    assert f"Welcome back, {username}!" in alerts(at, "success")
    assert f"Signed in as **{username}**" in texts(at)


def test_sign_up_mistakes_are_explained(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    at = dashboard()
    register(at, "bob-" + uuid.uuid4().hex[:6], repeat="something else entirely")
    assert "The two passwords differ. Type the same password twice." in alerts(at, "error")

    register(at, "bob-" + uuid.uuid4().hex[:6], password="short")
    assert any("Password must be at least 10 characters" in e for e in alerts(at, "error"))

    register(at, "no spaces allowed")
    assert any("Username:" in e and "letters, digits" in e for e in alerts(at, "error"))

    taken = api.new_account().username
    register(at, taken)
    assert any("Could not create the account" in e and "taken" in e for e in alerts(at, "error"))
    assert "Set up two-factor sign-in" not in texts(at)


def test_wrong_password_and_malformed_code(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    account = api.new_account()
    at = dashboard()
    sign_in(at, account.username, account.totp(1), password="not the password")
    assert any("Wrong username, password or two-factor code" in e for e in alerts(at, "error"))
    sign_in(at, account.username, "12ab")
    assert "Enter the 6-digit code your authenticator app shows right now." in alerts(at, "error")
    assert "Signed in as" not in texts(at)


class TestThrottling:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"login_max_failures_per_account": 3, "login_window_seconds": 600}

    def test_repeated_wrong_codes_lock_sign_in_with_the_wait_shown(
        self, dashboard: Callable[..., AppTest], api: ApiClient
    ) -> None:
        account = api.new_account()
        at = dashboard()
        wrong = f"{(int(account.totp()) + 500_000) % 1_000_000:06d}"
        for _ in range(3):
            sign_in(at, account.username, wrong)
            assert any("Wrong username, password or two-factor code" in e for e in alerts(at, "error"))
        sign_in(at, account.username, account.totp(1))
        [message] = alerts(at, "error")
        assert "Too many failed attempts" in message
        assert "please wait 10 min before trying again" in message or "please wait 9 min" in message
        assert "Signed in as" not in texts(at)


def test_unfinished_enrolment_is_resumed_at_sign_in(dashboard: Callable[..., AppTest], api: ApiClient) -> None:
    r, username = api.register()
    assert r.status_code == 201
    at = dashboard()
    sign_in(at, username, "123456")
    assert any("Two-factor sign-in is not set up" in w for w in alerts(at, "warning"))
    button(at, "Set up two-factor sign-in").click()
    at.run()
    secret = at.code[0].value
    assert secret != r.json()["totp"]["secret"], "a fresh secret is issued"
    widget(at.text_input, "Two-factor code").input(pyotp.TOTP(secret).now())
    button(at, "Confirm and sign in").click()
    at.run()
    assert f"Welcome, {username}! Two-factor sign-in is set up." in alerts(at, "success")


def test_expired_session_returns_to_sign_in(
    dashboard: Callable[..., AppTest], api: ApiClient, api_settings: Settings
) -> None:
    account = api.new_account()
    at = dashboard(account)
    assert at.title[0].value == "Orders"
    user_id = account.id
    expired = security.encode_session(api_settings, user_id, "gone", datetime.now(UTC) - timedelta(seconds=1))
    at.session_state["session"] = {"token": expired, "username": account.username, "expires_at": None}
    at.run()
    assert "Your session has ended. Please sign in again." in alerts(at, "warning")
    assert widget(at.text_input, "Two-factor code")
    assert "Signed in as" not in texts(at)


def test_unreachable_api_shows_a_banner(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port
    from tests.dashboard.conftest import APP

    monkeypatch.setenv("CRAWLCOIN_API_URL", f"http://127.0.0.1:{free_port()}")
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    [banner] = alerts(at, "error")
    assert "The crawlcoin service cannot be reached right now." in banner


def test_api_going_away_mid_session_shows_a_banner_not_a_traceback(
    dashboard: Callable[..., AppTest], api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import free_port

    account = api.new_account(coins=5)
    at = dashboard(account)
    assert at.title[0].value == "Orders"
    monkeypatch.setenv("CRAWLCOIN_API_URL", f"http://127.0.0.1:{free_port()}")
    at.run()
    assert not at.exception
    assert any("The crawlcoin service cannot be reached right now." in e for e in alerts(at, "error"))
    assert at.session_state["session"]["username"] == account.username, "the session is kept for when it is back"
