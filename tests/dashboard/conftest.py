"""Dashboard tests: the Streamlit app (AppTest, in-process) against a real API server over HTTP."""

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.runtime.media_file_storage import MediaFileKind
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Button, Widget

from core.storage import Result, Store, open_store
from tests.conftest import backend_unavailable
from tests.helpers import Account

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


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
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        backend_unavailable("browser", f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        backend_unavailable("browser", f"the playwright package is missing: {e}")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        except Exception as e:  # a chromium that cannot start means: no browser here
            backend_unavailable("browser", f"chromium did not start: {e}")
        yield browser
        browser.close()


@pytest.fixture
def store(store_url: str, api_url: str) -> Iterator[Store]:
    """The API's own store, for setting up what other services (miners, Prefect sync) would write."""
    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[bytes, str]]:
    """What the dashboard's download buttons hand to the browser: file name → (bytes, MIME type)."""
    offered: dict[str, tuple[bytes, str]] = {}
    load = MemoryMediaFileStorage.load_and_get_id

    def recording(self: MemoryMediaFileStorage, path_or_data: str | bytes, mimetype: str, kind: MediaFileKind,
                  filename: str | None = None) -> str:
        if kind == MediaFileKind.DOWNLOADABLE and isinstance(path_or_data, bytes) and filename:
            offered[filename] = (path_or_data, mimetype)
        return load(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return offered


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


def deliver(store: Store, order_id: str, miner_id: str, results: dict[int, dict[str, Any]]) -> None:
    """What miners would have delivered: claims the order's repetitions (as the dispatch flow does) and records
    one result per entry of `results` (n → Result fields, plus `body` bytes, `latency` seconds after the
    repetition's scheduled time, and `cap` for the body), like tests/api/test_results.py."""
    now = datetime.now(UTC)
    store.claim_repetitions(order_id, f"run-{uuid.uuid4().hex[:8]}", now + timedelta(days=3650), now, 10**9)
    due = {rep.n: rep.due_at for rep in store.get_repetitions(order_id, list(results))}
    recorded = []
    for n, spec in results.items():
        fields = dict(spec)
        body = fields.pop("body", b"")
        stored_at = due[n] + timedelta(seconds=fields.pop("latency", 1.0))
        fields.setdefault("final_url", "https://example.com/page")
        fields.setdefault("fetched_at", stored_at - timedelta(milliseconds=100))
        recorded.append(Result.with_body(body, fields.pop("cap", 1 << 20), job_key=f"{order_id}:{n}",
                                         order_id=order_id, n=n, miner_id=miner_id, stored_at=stored_at, **fields))
    store.record_results(recorded)
