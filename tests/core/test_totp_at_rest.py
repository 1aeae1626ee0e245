"""TOTP secrets are sealed in the store: a copy of the database alone does not give anyone codes."""

import time

import pyotp
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient

from api.app import create_app
from core.errors import CrawlcoinError
from core.security import TotpSecrets
from core.settings import Settings
from core.storage import open_store
from tests.conftest import make_settings

PASSWORD = "correct horse battery staple"


def _register(client: TestClient, username: str) -> str:
    r = client.post("/auth/register", json={"username": username, "password": PASSWORD})
    assert r.status_code == 201, r.text
    secret = r.json()["totp"]["secret"]
    r = client.post("/auth/totp/confirm", json={"username": username, "password": PASSWORD,
                                                "code": pyotp.TOTP(secret).now()})
    assert r.status_code == 200, r.text
    return secret


def test_the_store_holds_no_secret_in_clear_and_rotation_keeps_logins(tmp_path, valkey_url) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", valkey_url, totp_keys=old_key)
    with TestClient(create_app(settings)) as client:
        secret = _register(client, "alice")
    store = open_store(settings.resolved_store_url)
    stored = store.get_user_by_username("alice").totp_secret
    store.close()
    assert secret not in stored and stored.startswith("fernet:")
    assert Fernet(old_key.encode()).decrypt(stored.removeprefix("fernet:").encode()).decode() == secret

    rotated = settings.model_copy(update={"totp_keys": f"{new_key},{old_key}"})
    with TestClient(create_app(rotated)) as client:
        # the next step's code (the current one was used to confirm; one step of drift is allowed)
        r = client.post("/auth/login", json={"username": "alice", "password": PASSWORD,
                                             "code": pyotp.TOTP(secret).at(time.time() + 30)})
        assert r.status_code == 200, r.text

    lost = settings.model_copy(update={"totp_keys": new_key})
    with TestClient(create_app(lost)) as client:
        r = client.post("/auth/login", json={"username": "alice", "password": PASSWORD,
                                             "code": pyotp.TOTP(secret).now()})
        assert r.status_code == 503 and "CRAWLCOIN_TOTP_KEYS" in r.json()["detail"], r.text


def test_a_key_that_is_not_a_fernet_key_is_refused_with_the_setting_named(tmp_path) -> None:
    with pytest.raises(CrawlcoinError, match="CRAWLCOIN_TOTP_KEYS must be Fernet keys"):
        TotpSecrets(Settings(data_dir=tmp_path, totp_keys="not-a-key"))


def test_secrets_stored_in_clear_by_an_older_version_still_open(tmp_path) -> None:
    assert TotpSecrets(Settings(data_dir=tmp_path)).open("JBSWY3DPEHPK3PXP") == "JBSWY3DPEHPK3PXP"
