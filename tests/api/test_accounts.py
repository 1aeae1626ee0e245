"""Register → enrol TOTP → log in → sessions, against a real uvicorn server and store."""

import time
from datetime import UTC, datetime, timedelta

import httpx
import pyotp
import pytest

from core import security
from core.settings import Settings
from tests.helpers import PASSWORD, ApiClient, fresh_totp_step

LOGIN_FAILED = "wrong username, password or two-factor code (a code works only once)"


def test_register_enrol_login_and_me(api: ApiClient) -> None:
    r, username = api.register()
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["user"]["username"] == username and body["user"]["totp_enabled"] is False
    assert body["totp"]["otpauth_uri"].startswith("otpauth://totp/crawlcoin:")
    assert body["totp"]["qr_png"].startswith("data:image/png;base64,")
    secret = body["totp"]["secret"]
    assert "password" not in r.text and "hash" not in r.text

    # Login before enrolment is confirmed is refused with a pointer to what to do.
    early = api.post("/auth/login", json={"username": username, "password": PASSWORD,
                                          "code": pyotp.TOTP(secret).now()})
    assert early.status_code == 403 and "enrolment" in early.json()["detail"]

    totp = pyotp.TOTP(secret)
    fresh_totp_step()
    confirm = api.post("/auth/totp/confirm", json={"username": username, "password": PASSWORD,
                                                   "code": totp.at(time.time() - 30)})
    assert confirm.status_code == 200, confirm.text
    code = totp.now()
    login = api.post("/auth/login", json={"username": username, "password": PASSWORD, "code": code})
    assert login.status_code == 200, login.text
    token = login.json()["access_token"]
    me = api.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == username and me.json()["balance"] == 0
    assert me.json()["totp_enabled"] is True

    replay = api.post("/auth/login", json={"username": username, "password": PASSWORD, "code": code})
    assert replay.status_code == 401 and "only once" in replay.json()["detail"]


def test_wrong_code_and_wrong_password_are_refused(api: ApiClient) -> None:
    account = api.new_account()
    wrong_code = f"{(int(account.totp(1)) + 1) % 1_000_000:06d}"
    r = api.post("/auth/login", json={"username": account.username, "password": PASSWORD, "code": wrong_code})
    assert r.status_code == 401 and r.json()["detail"] == LOGIN_FAILED
    r = api.post("/auth/login", json={"username": account.username, "password": "not the password",
                                      "code": account.totp(1)})
    assert r.status_code == 401 and r.json()["detail"] == LOGIN_FAILED
    r = api.post("/auth/login", json={"username": "nobody-here", "password": PASSWORD, "code": "123456"})
    assert r.status_code == 401 and r.json()["detail"] == LOGIN_FAILED


def test_repeated_failures_are_throttled_per_account(api: ApiClient, api_settings: Settings) -> None:
    account = api.new_account()
    for _ in range(api_settings.login_max_failures_per_account):
        r = api.post("/auth/login", json={"username": account.username, "password": "bad password!", "code": "000000"})
        assert r.status_code == 401
    r = api.post("/auth/login", json={"username": account.username, "password": PASSWORD, "code": account.totp(1)})
    assert r.status_code == 429, "even the right password waits out the lock"
    assert 0 < int(r.headers["Retry-After"]) <= api_settings.login_window_seconds
    assert "try again in" in r.json()["detail"]
    # Another account from the same address is not locked by this one.
    other = api.new_account()
    assert other.headers


class TestPerClientThrottle:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"login_max_failures_per_client": 8, "login_max_failures_per_account": 50}

    def test_repeated_failures_are_throttled_per_client_address(self, api: ApiClient) -> None:
        for i in range(8):
            r = api.post("/auth/login", json={"username": f"ghost{i}", "password": "whatever123", "code": "000000"})
            assert r.status_code == 401
        r = api.post("/auth/login", json={"username": "ghost-new", "password": "whatever123", "code": "000000"})
        assert r.status_code == 429 and "your address" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) > 0


def test_logout_ends_the_session(api: ApiClient) -> None:
    account = api.new_account()
    assert api.get("/me", headers=account.headers).status_code == 200
    assert api.post("/auth/logout", headers=account.headers).status_code == 204
    r = api.get("/me", headers=account.headers)
    assert r.status_code == 401 and "log in again" in r.json()["detail"]


def test_expired_and_forged_session_tokens_are_refused(api: ApiClient, api_settings: Settings) -> None:
    account = api.new_account()
    expired = security.encode_session(api_settings, account.id, "any", datetime.now(UTC) - timedelta(seconds=5))
    r = api.get("/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["detail"] == "session expired; log in again"
    forged = security.encode_session(
        Settings(secret_key="another-secret-" + "y" * 32, mode="test"), account.id, "x",
        datetime.now(UTC) + timedelta(hours=1),
    )
    r = api.get("/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid session token"
    r = api.get("/me")
    assert r.status_code == 401 and "Authorization" in r.json()["detail"]


def test_weak_passwords_and_taken_usernames(api: ApiClient) -> None:
    cases = [("short1", "password must be at least"), ("aaaaaaaaaaaaaa", "5 different characters")]
    for password, message in cases:
        r, _ = api.register(password=password)
        assert r.status_code == 422 and message in r.json()["detail"]
    r, name = api.register(username="Sam-Example")
    assert r.status_code == 201
    r, _ = api.register(username="sam-example")
    assert r.status_code == 409 and "taken" in r.json()["detail"]
    r, _ = api.register(username="carol", password="carol-has-a-long-password")
    assert r.status_code == 422 and "username" in r.json()["detail"]


def test_totp_setup_reissues_secret_until_confirmed(api: ApiClient) -> None:
    r, username = api.register()
    first = r.json()["totp"]["secret"]
    again = api.post("/auth/totp/setup", json={"username": username, "password": PASSWORD})
    assert again.status_code == 200 and again.json()["secret"] != first
    stale = api.post("/auth/totp/confirm", json={"username": username, "password": PASSWORD,
                                                 "code": pyotp.TOTP(first).now()})
    assert stale.status_code == 401
    ok = api.post("/auth/totp/confirm", json={"username": username, "password": PASSWORD,
                                              "code": pyotp.TOTP(again.json()["secret"]).now()})
    assert ok.status_code == 200
    locked = api.post("/auth/totp/setup", json={"username": username, "password": PASSWORD})
    assert locked.status_code == 401 and "already set up" in locked.json()["detail"]


class TestOneAnswer:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"login_max_failures_per_account": 50}

    def test_failed_sign_ins_all_get_one_answer(self, api: ApiClient) -> None:
        """Right password with a wrong or replayed code, wrong password, unknown user: nothing tells them apart."""
        account = api.new_account()
        fresh_totp_step()
        used = account.totp(1)
        assert api.post("/auth/login", json={"username": account.username, "password": PASSWORD,
                                             "code": used}).status_code == 200
        wrong_code = f"{(int(account.totp()) + 1) % 1_000_000:06d}"
        attempts = {
            "right password, wrong code": {"password": PASSWORD, "code": wrong_code},
            "right password, replayed code": {"password": PASSWORD, "code": used},
            "wrong password, right code": {"password": "not the password", "code": account.totp(1)},
            "wrong password, wrong code": {"password": "not the password", "code": wrong_code},
        }
        answers = {}
        for case, fields in attempts.items():
            r = api.post("/auth/login", json={"username": account.username, **fields})
            answers[case] = (r.status_code, r.json()["detail"])
        r = api.post("/auth/login", json={"username": "nobody-here", "password": PASSWORD, "code": wrong_code})
        answers["unknown user"] = (r.status_code, r.json()["detail"])
        assert set(answers.values()) == {(401, LOGIN_FAILED)}, answers
        # Re-enrolling and re-confirming an enrolled account do not tell the right password either.
        right = api.post("/auth/totp/setup", json={"username": account.username, "password": PASSWORD})
        wrong = api.post("/auth/totp/setup", json={"username": account.username, "password": "not the password"})
        assert (right.status_code, right.json()) == (wrong.status_code, wrong.json()) and right.status_code == 401
        right = api.post("/auth/totp/confirm", json={"username": account.username, "password": PASSWORD,
                                                     "code": wrong_code})
        wrong = api.post("/auth/totp/confirm", json={"username": account.username, "password": "not the password",
                                                     "code": wrong_code})
        assert (right.status_code, right.json()) == (wrong.status_code, wrong.json()) == (401, {"detail": LOGIN_FAILED})


def test_every_failed_sign_in_counts_towards_the_lock(api: ApiClient, api_settings: Settings) -> None:
    account = api.new_account()
    wrong_code = f"{(int(account.totp(1)) + 1) % 1_000_000:06d}"
    for _ in range(api_settings.login_max_failures_per_account):
        r = api.post("/auth/login", json={"username": account.username, "password": PASSWORD, "code": wrong_code})
        assert r.status_code == 401
    r = api.post("/auth/login", json={"username": account.username, "password": PASSWORD, "code": account.totp(1)})
    assert r.status_code == 429


def _client_from(api_url: str, address: str) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x address is this machine)."""
    return httpx.Client(base_url=api_url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


class TestForwardedAddresses:
    PROXY, STRANGER = "127.0.0.2", "127.0.0.3"

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"trusted_proxies": f"{self.PROXY}/32, 10.0.0.0/8", "login_max_failures_per_account": 50}

    def test_one_address_behind_a_trusted_proxy_does_not_lock_out_the_others(
        self, api: ApiClient, api_url: str, api_settings: Settings
    ) -> None:
        account, other = api.new_account(), api.new_account()
        limit = api_settings.login_max_failures_per_client
        assert limit >= 30
        with _client_from(api_url, self.PROXY) as proxy:
            for i in range(limit):
                r = proxy.post("/auth/login", json={"username": f"ghost{i}", "password": "whatever123",
                                                    "code": "000000"}, headers={"X-Forwarded-For": "203.0.113.7"})
                assert r.status_code == 401, r.text
            r = proxy.post("/auth/login", json={"username": "ghost-new", "password": "whatever123", "code": "000000"},
                           headers={"X-Forwarded-For": "203.0.113.7"})
            assert r.status_code == 429 and "your address" in r.json()["detail"]
            # Another user through the same proxy (the dashboard), and one whose chain crosses another trusted
            # proxy, sign in as usual.
            fresh_totp_step()
            r = proxy.post("/auth/login", json={"username": account.username, "password": PASSWORD,
                                                "code": account.totp(1)}, headers={"X-Forwarded-For": "198.51.100.9"})
            assert r.status_code == 200, r.text
            r = proxy.post("/auth/login", json={"username": other.username, "password": PASSWORD,
                                                "code": other.totp(1)},
                           headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.10, 10.1.2.3"})
            assert r.status_code == 200, r.text

    def test_forwarded_for_from_an_untrusted_peer_is_ignored(self, api_url: str, api_settings: Settings) -> None:
        limit = api_settings.login_max_failures_per_client
        with _client_from(api_url, self.STRANGER) as stranger:
            for i in range(limit):
                r = stranger.post("/auth/login", json={"username": f"ghost{i}", "password": "whatever123",
                                                       "code": "000000"}, headers={"X-Forwarded-For": f"192.0.2.{i}"})
                assert r.status_code == 401, r.text
            r = stranger.post("/auth/login", json={"username": "ghost-new", "password": "whatever123",
                                                   "code": "000000"}, headers={"X-Forwarded-For": "192.0.2.200"})
            assert r.status_code == 429 and "your address" in r.json()["detail"]


def test_common_passwords_are_refused_at_registration(api: ApiClient) -> None:
    for password in ("password123", "qwertyuiop1", "iloveyou1234"):
        r, _ = api.register(password=password)
        assert r.status_code == 422, r.text
        assert "password is too common or too easy to guess" in r.json()["detail"]
    r, _ = api.register(password="pelican ladder quietly")
    assert r.status_code == 201, r.text


class TestRegistrationThrottle:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {"register_max_per_client": 4, "register_window_seconds": 600}

    def test_registrations_are_throttled_per_client_address(self, api: ApiClient, api_url: str) -> None:
        statuses = [api.register()[0].status_code for _ in range(4)]
        assert statuses == [201] * 4
        r, username = api.register()
        assert r.status_code == 429 and "too many new accounts" in r.json()["detail"]
        assert 0 < int(r.headers["Retry-After"]) <= 600
        assert api.post("/auth/login", json={"username": username, "password": PASSWORD,
                                             "code": "123456"}).json()["detail"] == LOGIN_FAILED, "not created"
        with _client_from(api_url, "127.0.0.4") as elsewhere:
            r = elsewhere.post("/auth/register", json={"username": "from-elsewhere", "password": PASSWORD})
            assert r.status_code == 201, "another address still registers"
