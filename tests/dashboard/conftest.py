"""Dashboard tests: the Streamlit app (AppTest, in-process) against a real API server over HTTP."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Button, Widget

from core.storage import Store, open_store
from tests.helpers import Account

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """The dashboard only speaks HTTP; one store backend is enough here."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def dashboard(api_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """A fresh browser session of the dashboard, pointed at the real API; signed in when given an account."""
    monkeypatch.setenv("CRAWLCOIN_API_URL", api_url)

    def open_app(account: Account | None = None, page: str | None = None) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=30)
        if account is not None:
            token = account.headers["Authorization"].removeprefix("Bearer ")
            at.session_state["session"] = {"token": token, "username": account.username, "expires_at": None}
        at.run()
        if page:
            at.switch_page(page).run()
        assert not at.exception, at.exception
        return at

    return open_app


@pytest.fixture
def store(store_url: str, api_url: str) -> Iterator[Store]:
    """The API's own store, for setting up what other services (miners, Prefect sync) would write."""
    s = open_store(store_url)
    yield s
    s.close()


def button(at: AppTest, label: str) -> Button:
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def widget(elements: object, label: str) -> Widget:
    matches = [w for w in elements if w.label == label]  # type: ignore[attr-defined]
    assert matches, f"no widget {label!r}"
    return matches[0]


def texts(at: AppTest) -> str:
    """Everything a user reads on the page: markdown, captions, alerts, metrics, code blocks."""
    parts: list[str] = []
    for kind in ("title", "subheader", "markdown", "caption", "success", "info", "warning", "error", "code"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    parts.extend(f"{m.label}: {m.value}" for m in at.metric)
    parts.extend(str(e.value) for e in at.sidebar.markdown)
    return "\n".join(parts)


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; metrics: {[m.label for m in at.metric]}"
    return values[0]


def alerts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]
