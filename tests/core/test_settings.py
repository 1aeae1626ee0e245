"""Production refuses dev defaults; dev and test run on them."""

import pytest
from pydantic import ValidationError

from core.settings import DEV_SECRET, Settings


def test_dev_mode_runs_on_defaults() -> None:
    settings = Settings(mode="dev")
    assert settings.secret_key == DEV_SECRET and settings.faucet_enabled
    assert settings.resolved_store_url.startswith("sqlite:///")


def test_production_refuses_the_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAWLCOIN_MODE", "production")
    monkeypatch.delenv("CRAWLCOIN_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="CRAWLCOIN_SECRET_KEY"):
        Settings()
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(secret_key="short")


def test_production_with_a_real_secret_disables_the_faucet() -> None:
    settings = Settings(mode="production", secret_key="k" * 48)
    assert not settings.faucet_enabled


def test_production_refuses_private_targets() -> None:
    with pytest.raises(ValidationError, match="ALLOW_PRIVATE_TARGETS"):
        Settings(mode="production", secret_key="k" * 48, allow_private_targets=True)
