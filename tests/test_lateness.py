"""Lateness alerts on a running `crawlcoin up` with two workers: an order whose miners stop is reported once to
the operator's alert channel (a local HTTP receiver, as apprise's json:// posts to it) and shown late to the
customer (API and dashboard order card); once a miner is back and the backlog delivered, one "on time again"
notice follows and the order shows on time.
"""

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import free_port
from tests.flows.conftest import wait_for
from tests.helpers import Account, ApiClient, Receiver, interrupt
from tests.test_cli_up import start_up, stop, wait_for_table
from tests.test_e2e import CRAWLCOIN, Pages, client_env
from tests.test_metrics import scrape

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
LATE_AFTER = 10  # generous: a loaded 2-core CI machine delivers a few seconds late while "on time"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.shutdown()


def miner(api_port_mining: int, token: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([CRAWLCOIN, "mine", "--server", f"http://127.0.0.1:{api_port_mining}", "--token", token,
                             "--allow-private-targets"], env=client_env(), stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


def order_card(api_url: str, account: Account, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The customer's Orders page in the dashboard, signed in, against the running API."""
    monkeypatch.setenv("CRAWLCOIN_API_URL", api_url)
    at = AppTest.from_file(str(APP), default_timeout=30)
    at.session_state["session"] = {"token": account.headers["Authorization"].removeprefix("Bearer "),
                                   "username": account.username, "expires_at": None}
    at.run()
    assert not at.exception, at.exception
    return at


def test_a_late_order_alerts_once_and_its_recovery_clears_it(tmp_path: Path, receiver: Receiver,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pages = Pages()
    ports = {name: free_port() for name in ("api", "valkey", "mining")}
    proc = start_up(tmp_path / "data", ports["api"], ports["valkey"], "--workers", "2", mining_port=ports["mining"],
                    CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true", CRAWLCOIN_DOMAIN_RATE_PER_SECOND="50",
                    CRAWLCOIN_LATE_AFTER_SECONDS=str(LATE_AFTER), CRAWLCOIN_LATENESS_INTERVAL_SECONDS="1",
                    CRAWLCOIN_ALERT_URLS=f"json://127.0.0.1:{receiver.server_port}/crawlcoin-alerts")
    api_url = f"http://127.0.0.1:{ports['api']}"
    api = ApiClient(api_url)
    miners: list[subprocess.Popen[bytes] | None] = []
    try:
        wait_for_table(proc)
        customer = api.new_account(coins=60)
        volunteer = api.new_account()
        token = api.post("/tokens", json={"scopes": ["mine"]}, headers=volunteer.headers).json()["token"]
        miners.append(miner(ports["mining"], token, tmp_path / "miner.log"))
        start = datetime.now(UTC) + timedelta(seconds=8)
        r = api.post("/orders", headers=customer.headers, json={
            "url": f"http://127.0.0.1:{pages.server_port}/page", "max_runs": 60, "start_at": start.isoformat(),
            "schedule": {"kind": "interval", "every_seconds": 1}})
        assert r.status_code == 201, r.text
        oid = r.json()["id"]

        def order() -> dict[str, Any]:
            got = api.get(f"/orders/{oid}", headers=customer.headers)
            assert got.status_code == 200, got.text
            return got.json()

        # On time while the miner fetches: no alert, nothing late.
        wait_for(lambda: order()["repetitions"]["delivered"] >= 5, 120, "five repetitions delivered on time")
        assert order()["late"] is None
        assert receiver.notices == []

        # The miner stops: the order falls behind, the operator hears of it once, the customer sees it.
        interrupt(miners)
        wait_for(lambda: len(receiver.notices) >= 1, 60, "the late alert", poll=0.2)
        late = order()["late"]
        assert late is not None and late["overdue"] >= 1 and late["late_after_seconds"] == LATE_AFTER, late
        assert datetime.fromisoformat(late["oldest_due_at"]) < datetime.now(UTC) - timedelta(seconds=LATE_AFTER)
        [alert] = receiver.notices
        assert alert["path"] == "/crawlcoin-alerts" and alert["type"] == "warning"
        assert alert["title"] == f"crawlcoin: order {oid} is late"
        assert f"of order {oid} (http://127.0.0.1:{pages.server_port}/page) are not delivered {LATE_AFTER} s after " \
               "their due time" in alert["message"], alert["message"]
        assert scrape(f"127.0.0.1:{ports['api']}")["crawlcoin_orders_late"] == 1, "`crawlcoin status`: orders late 1"
        at = order_card(api_url, customer, monkeypatch)
        [warning] = [str(w.value) for w in at.warning if "Running late" in str(w.value)]
        assert f"not delivered {LATE_AFTER} s after their due time" in warning
        # Several passes of both workers later, still one alert for this episode.
        wait_for(lambda: order()["late"]["overdue"] >= late["overdue"] + 4, 30, "the backlog growing")
        assert receiver.titles() == [f"crawlcoin: order {oid} is late"]

        # A miner is back: the backlog goes out, one notice says so, and the order is on time again.
        miners.append(miner(ports["mining"], token, tmp_path / "miner.log"))
        wait_for(lambda: len(receiver.notices) >= 2, 60, "the recovery notice", poll=0.2)
        recovered = receiver.notices[1]
        assert recovered["title"] == f"crawlcoin: order {oid} is on time again" and recovered["type"] == "success"
        assert f"no repetition of it is more than {LATE_AFTER} s overdue" in recovered["message"], recovered["message"]
        assert order()["late"] is None
        assert scrape(f"127.0.0.1:{ports['api']}")["crawlcoin_orders_late"] == 0
        at = order_card(api_url, customer, monkeypatch)
        assert not [w for w in at.warning if "Running late" in str(w.value)]
        delivered = order()["repetitions"]["delivered"]
        wait_for(lambda: order()["repetitions"]["delivered"] >= delivered + 4, 30, "deliveries on time again")
        assert receiver.titles() == [f"crawlcoin: order {oid} is late", f"crawlcoin: order {oid} is on time again"]
        assert order()["late"] is None
    finally:
        interrupt(miners)
        stop(proc)
        api.close()
        pages.shutdown()
