"""The operator's view of a running `crawlcoin up`: every service's `/metrics` moving with the work done, and
`crawlcoin status` on a terminal.

One stack for the module: a customer orders a local page every 2 s × 5, a volunteer runs `crawlcoin mine`,
the customer runs `crawlcoin results`; once the five files are on disk, the servers are scraped.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, Terminal, interrupt
from tests.test_cli_up import start_up, stop, wait_for_table
from tests.test_e2e import Pages, client_env

CRAWLCOIN = str(Path(sys.executable).parent / "crawlcoin")
RUNS = 5


def scrape(address: str) -> dict[str, float]:
    """`name{label="v",…}` → value, as a Prometheus server would store it."""
    response = httpx.get(f"http://{address}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


@dataclass
class Stack:
    data: Path
    env: dict[str, str]
    targets: dict[str, list[str]]  # service → host:port of each server
    out: Path
    order_id: str

    def files(self) -> list[Path]:
        return sorted((self.out / self.order_id).glob("[0-9]*.meta.json"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("metrics")
    pages = Pages()
    ports = {name: free_port() for name in ("api", "valkey", "mining", "results", "dashboard", "prefect")}
    env = dict(
        CRAWLCOIN_RESULTS_PORT=str(ports["results"]),
        CRAWLCOIN_DASHBOARD_PORT=str(ports["dashboard"]),
        CRAWLCOIN_PREFECT_PORT=str(ports["prefect"]),
        CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true",
    )
    proc = start_up(tmp / "data", ports["api"], ports["valkey"], mining_port=ports["mining"], **env)
    api = ApiClient(f"http://127.0.0.1:{ports['api']}")
    clients: list[subprocess.Popen[bytes] | None] = []
    try:
        table = wait_for_table(proc)
        assert "/metrics" in table and "metrics-targets.json" in table, table
        groups = json.loads((tmp / "data" / "metrics-targets.json").read_text())
        targets = {g["labels"]["service"]: g["targets"] for g in groups}
        customer = api.new_account()
        assert api.post("/wallet/faucet", json={"amount": 10}, headers=customer.headers).status_code == 200
        volunteer = api.new_account()
        mine_token = api.post("/tokens", json={"scopes": ["mine"]}, headers=volunteer.headers).json()["token"]
        start = (datetime.now(UTC) + timedelta(seconds=8)).isoformat()
        order = api.post(
            "/orders",
            headers=customer.headers,
            json={
                "url": f"http://127.0.0.1:{pages.server_port}/page",
                "max_runs": RUNS,
                "start_at": start,
                "schedule": {"kind": "interval", "every_seconds": 2},
            },
        )
        assert order.status_code == 201, order.text
        oid = order.json()["id"]
        results_token = api.post(
            "/tokens", json={"scopes": ["results"], "order_id": oid}, headers=customer.headers
        ).json()["token"]
        out = tmp / "results"
        clients.append(
            subprocess.Popen(
                [
                    CRAWLCOIN,
                    "mine",
                    "--server",
                    f"http://127.0.0.1:{ports['mining']}",
                    "--token",
                    mine_token,
                    "--allow-private-targets",
                ],
                env=client_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        clients.append(
            subprocess.Popen(
                [
                    CRAWLCOIN,
                    "results",
                    "--server",
                    f"http://127.0.0.1:{ports['results']}",
                    "--token",
                    results_token,
                    "--order",
                    oid,
                    "--out",
                    str(out),
                ],
                env=client_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        up_env = {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))}
        up_env.update(CRAWLCOIN_DATA_DIR=str(tmp / "data"), CRAWLCOIN_API_PORT=str(ports["api"]), **env)
        stack = Stack(tmp / "data", up_env, targets, out, oid)
        wait_for(lambda: len(stack.files()) == RUNS, 240, "all five results on disk", poll=0.5)
        yield stack
    finally:
        interrupt(clients)
        stop(proc)
        api.close()
        pages.shutdown()


def test_every_server_s_metrics_move_with_the_work_done(stack: Stack) -> None:
    assert set(stack.targets) == {"api", "worker", "mining", "results"}
    [api], [worker], [mining], [results] = (stack.targets[s] for s in ("api", "worker", "mining", "results"))
    files = len(stack.files())

    m = scrape(mining)
    assert m['crawlcoin_jobs_finished_total{outcome="paid"}'] == files == RUNS, "one paid job per file on disk"
    assert m["crawlcoin_coins_paid_total"] == RUNS
    assert m["crawlcoin_store_lateness_seconds_count"] == RUNS
    assert m["crawlcoin_miners_connected"] == 1 and m["crawlcoin_leases_outstanding"] == 0
    assert m["crawlcoin_leases_expired_total"] == 0

    w = scrape(worker)
    assert w["crawlcoin_jobs_released_total"] == RUNS
    assert w["crawlcoin_release_lateness_seconds_count"] == RUNS
    assert w['crawlcoin_release_lateness_seconds_bucket{le="+Inf"}'] == RUNS

    # The client acknowledges a batch once its files are written: the count follows the files.
    wait_for(lambda: scrape(results)["crawlcoin_results_delivered_total"] == files, 30, "the last acknowledgement")
    r = scrape(results)
    assert r["crawlcoin_result_clients_connected"] in (0, 1)  # the client leaves once the order is complete

    a = scrape(api)
    assert a["crawlcoin_queue_jobs"] == 0 and a["crawlcoin_queue_due_jobs"] == 0
    assert a["crawlcoin_orders_late"] == 0 and a["crawlcoin_queue_oldest_due_seconds"] == 0
    assert "crawlcoin_sync_requests_pending" in a
    for figures in (m, w, r, a):  # nothing failed on the way, and no label names an order
        assert not any(k.startswith("crawlcoin_backend_errors_total") and v for k, v in figures.items()), figures
        assert not any(stack.order_id in k for k in figures)


def test_status_shows_the_running_marketplace_on_a_terminal(stack: Stack) -> None:
    with Terminal([CRAWLCOIN, "status"], stack.env) as term:
        assert term.proc.wait(timeout=60) == 0, term.read()
        screen = term.screen()
    for service, addresses in stack.targets.items():
        assert f"{service} {addresses[0]} up" in screen, screen
    assert "store up" in screen and "valkey up" in screen
    assert "miners online 1" in screen and "orders late 0" in screen
    assert f"jobs finished paid {RUNS}" in screen and f"coins paid {RUNS}" in screen
    assert "lateness due → stored p50 / p99 (since start)" in screen

    with Terminal([CRAWLCOIN, "status", "--watch", "--interval", "1"], stack.env) as term:
        term.wait_for(f"results delivered {RUNS}", 60)
        before = len(term.output)
        wait_for(lambda: len(term.read()) > before, 30, "a refresh")
        assert term.ctrl_c() == 0


def test_status_says_which_service_is_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))}
    env.update(
        CRAWLCOIN_DATA_DIR=str(tmp_path),
        CRAWLCOIN_API_PORT=str(free_port()),
        CRAWLCOIN_MINING_PORT=str(free_port()),
        CRAWLCOIN_RESULTS_PORT=str(free_port()),
    )
    with Terminal([CRAWLCOIN, "status"], env) as term:
        assert term.proc.wait(timeout=60) == 1
        screen = term.screen()
    assert f"api 127.0.0.1:{env['CRAWLCOIN_API_PORT']} down" in screen, screen
    assert f"mining 127.0.0.1:{env['CRAWLCOIN_MINING_PORT']} down" in screen
