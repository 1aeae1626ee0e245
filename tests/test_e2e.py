"""The whole product on one machine, as a new user meets it: `crawlcoin up` and public interfaces only.

A customer registers with TOTP, takes test coins and orders a local page every 2 s × 5; a
volunteer runs `crawlcoin mine`; the customer runs `crawlcoin results`. Halfway through,
`crawlcoin up` is stopped and started again on the same data directory. In the end: five files
whose hashes match the pages served, the customer paid 5, the miner earned 5, the escrow is
empty, the order is completed and its Prefect deployment schedules nothing more.
"""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.flows.conftest import wait_for
from tests.helpers import ApiClient, interrupt
from tests.test_cli_up import prefect_auth, start_up, stop, wait_for_table

CRAWLCOIN = str(Path(sys.executable).parent / "crawlcoin")


class Pages(http.server.ThreadingHTTPServer):
    """The page to scrape: a different body on every request, each one remembered."""

    def __init__(self) -> None:
        self.served: list[bytes] = []
        pages = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/robots.txt":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = f"<html><body>fetch #{len(pages.served) + 1} at {time.time()}</body></html>".encode()
                pages.served.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))} | {"COLUMNS": "120"}


def start_clients(api: ApiClient, ports: dict[str, int], volunteer: object, customer: object, order_ids: list[str],
                  tmp_path: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Path]:
    """A `crawlcoin mine` for the volunteer and a `crawlcoin results` for the customer's orders (logs in
    `tmp_path`); returns both and the folder the results go to."""
    token = api.post("/tokens", json={"scopes": ["mine"]}, headers=volunteer.headers).json()["token"]  # type: ignore[attr-defined]
    miner = subprocess.Popen(
        [CRAWLCOIN, "mine", "--server", f"http://127.0.0.1:{ports['mining']}", "--token", token,
         "--allow-private-targets"], env=client_env(), stdout=open(tmp_path / "miner.log", "wb"),
        stderr=subprocess.STDOUT)
    token = api.post("/tokens", json={"scopes": ["results"]}, headers=customer.headers).json()["token"]  # type: ignore[attr-defined]
    out = tmp_path / "results"
    results = subprocess.Popen(
        [CRAWLCOIN, "results", "--server", f"http://127.0.0.1:{ports['results']}", "--token", token,
         "--out", str(out), *[x for oid in order_ids for x in ("--order", oid)]], env=client_env(),
        stdout=open(tmp_path / "results.log", "wb"), stderr=subprocess.STDOUT)
    return miner, results, out


def ns_on_disk(out: Path, order_ids: list[str]) -> dict[str, list[int]]:
    """The repetitions of each order that the result client wrote (by their .meta.json files)."""
    return {oid: sorted(json.loads(p.read_text())["n"] for p in (out / oid).glob("[0-9]*.meta.json"))
            for oid in order_ids}


@pytest.fixture(params=["sqlite", "cassandra"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The README's defaults (SQLite in the data dir), and the same stack on a Cassandra store."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("cassandra_url")
    return {"CRAWLCOIN_STORE_URL": f"{url.rsplit('/', 1)[0]}/crawlcoin_e2e_{uuid.uuid4().hex[:8]}"}


def test_order_to_files_through_crawlcoin_up_with_a_restart(tmp_path: Path, store_env: dict[str, str]) -> None:
    pages = Pages()
    ports = {name: free_port() for name in ("api", "valkey", "mining", "results", "dashboard", "prefect")}
    up_env = dict(CRAWLCOIN_RESULTS_PORT=str(ports["results"]), CRAWLCOIN_DASHBOARD_PORT=str(ports["dashboard"]),
                  CRAWLCOIN_PREFECT_PORT=str(ports["prefect"]), CRAWLCOIN_ALLOW_PRIVATE_TARGETS="true",
                  CRAWLCOIN_LEASE_SECONDS="10", **store_env)

    def up() -> subprocess.Popen[str]:
        proc = start_up(tmp_path / "data", ports["api"], ports["valkey"], mining_port=ports["mining"], **up_env)
        wait_for_table(proc)
        return proc

    proc = up()
    api = ApiClient(f"http://127.0.0.1:{ports['api']}")
    miner_proc = results_proc = None
    try:
        customer = api.new_account()
        assert api.post("/wallet/faucet", json={"amount": 10}, headers=customer.headers).status_code == 200
        volunteer = api.new_account()
        mine_token = api.post("/tokens", json={"scopes": ["mine"]}, headers=volunteer.headers).json()["token"]
        start = (datetime.now(UTC) + timedelta(seconds=8)).isoformat()
        order = api.post("/orders", headers=customer.headers, json={
            "url": f"http://127.0.0.1:{pages.server_port}/page", "max_runs": 5, "start_at": start,
            "schedule": {"kind": "interval", "every_seconds": 2}})
        assert order.status_code == 201, order.text
        oid = order.json()["id"]
        results_token = api.post("/tokens", json={"scopes": ["results"], "order_id": oid},
                                 headers=customer.headers).json()["token"]
        out = tmp_path / "results"
        miner_proc = subprocess.Popen(
            [CRAWLCOIN, "mine", "--server", f"http://127.0.0.1:{ports['mining']}", "--token", mine_token,
             "--allow-private-targets"], env=client_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results_proc = subprocess.Popen(
            [CRAWLCOIN, "results", "--server", f"http://127.0.0.1:{ports['results']}", "--token", results_token,
             "--order", oid, "--out", str(out)], env=client_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

        def files() -> list[dict]:
            folder = out / oid
            if not folder.exists():
                return []
            return [json.loads(p.read_text()) for p in sorted(folder.glob("[0-9]*.meta.json"))]

        wait_for(lambda: len(files()) >= 2, 180, "the first results on disk", poll=0.5)
        assert stop(proc) == 0  # the whole stack goes down mid-order …
        proc = up()             # … and comes back on the same data directory
        wait_for(lambda: len(files()) == 5, 240, "all five results on disk", poll=0.5)

        metas = files()
        assert [m["n"] for m in metas] == [1, 2, 3, 4, 5]
        served = {hashlib.sha256(b).hexdigest() for b in pages.served}
        for meta in metas:
            body = (out / oid / meta["body"]).read_bytes()
            assert hashlib.sha256(body).hexdigest() == meta["sha256"] and meta["sha256"] in served
            assert meta["validation"] == "unchecked", "one volunteer: no other account could check its pages"

        assert api.balance(customer) == 5, "the customer paid 5 coins, once"
        # on Cassandra the payment is written just after the result it pays for
        wait_for(lambda: api.balance(volunteer) >= 5, 30, "the miner's pay for the fifth result")
        assert api.balance(volunteer) == 5, "the miner earned 5 coins, once"
        wait_for(lambda: api.get(f"/orders/{oid}", headers=customer.headers).json()["status"] == "completed", 150,
                 "the order to complete")
        assert api.get(f"/orders/{oid}", headers=customer.headers).json()["escrow_balance"] == 0

        def deployments() -> list[dict]:
            return httpx.post(f"http://127.0.0.1:{ports['prefect']}/api/deployments/filter",
                              json={"deployments": {"name": {"any_": [f"order-{oid}"]}}},
                              headers=prefect_auth(tmp_path / "data"), timeout=10).json()

        # the next sync pass after completion deletes it (later on a loaded machine)
        wait_for(lambda: deployments() == [], 60, "the completed order's deployment to be deleted", poll=1)
    finally:
        interrupt([miner_proc, results_proc])
        stop(proc)
        api.close()
        pages.shutdown()


def test_demo_shows_results_arriving(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("api", "valkey", "mining", "results", "dashboard", "prefect")}
    proc = start_up(tmp_path, ports["api"], ports["valkey"], "--demo", mining_port=ports["mining"],
                    CRAWLCOIN_RESULTS_PORT=str(ports["results"]), CRAWLCOIN_DASHBOARD_PORT=str(ports["dashboard"]),
                    CRAWLCOIN_PREFECT_PORT=str(ports["prefect"]))
    try:
        out = wait_for_table(proc)
        assert "demo page" in out and "result client" in out and "miner" in out

        def written() -> list[Path]:
            return sorted((tmp_path / "demo-results").glob("*/[0-9]*.html"))

        wait_for(lambda: len(written()) >= 2, 120, "demo results on disk", poll=0.5)
        assert all(b"Hello from the crawlcoin demo page" in p.read_bytes() for p in written())
        # The result client exits when the demo order is done (12 × 5 s): the stack stays up.
        console: list[str] = []
        assert proc.stdout is not None
        lines = proc.stdout
        threading.Thread(target=lambda: console.extend(iter(lines.readline, "")), daemon=True).start()
        wait_for(lambda: len(written()) == 12, 150, "all 12 demo results", poll=0.5)
        wait_for(lambda: any("result client finished its work" in x for x in console), 60,
                 "the result client to finish", poll=0.5)
        time.sleep(30)  # longer than a restart loop of the finished client took to stop everything
        assert proc.poll() is None, "".join(console)
        assert not any("died" in x or "giving up" in x for x in console), "".join(console)
        assert httpx.get(f"http://127.0.0.1:{ports['api']}/health", timeout=5).status_code == 200
    finally:
        assert stop(proc) == 0
