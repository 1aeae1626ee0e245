"""`crawlcoin up`, the README's run command, started as a subprocess and driven over HTTP."""

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyotp

from tests.conftest import free_port
from tests.helpers import PASSWORD, ApiClient, interval_order

CRAWLCOIN = str(Path(sys.executable).parent / "crawlcoin")


def start_up(data_dir: Path, api_port: int, valkey_port: int, *args: str,
             mining_port: int | None = None, **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRAWLCOIN_", "PREFECT_"))}
    env.update(CRAWLCOIN_DATA_DIR=str(data_dir), CRAWLCOIN_API_PORT=str(api_port),
               CRAWLCOIN_VALKEY_PORT=str(valkey_port), CRAWLCOIN_MINING_PORT=str(mining_port or free_port()),
               CRAWLCOIN_RESULTS_PORT=str(free_port()), CRAWLCOIN_DASHBOARD_PORT=str(free_port()),
               CRAWLCOIN_PREFECT_PORT=str(free_port()), COLUMNS="200")
    env.update(extra)
    return subprocess.Popen([CRAWLCOIN, "up", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for_table(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("crawlcoin up exited early:\n" + "".join(seen))
        seen.append(line)
        if line.lstrip().startswith("└") and any("/docs" in x for x in seen):  # the table's last line
            return "".join(seen)
    raise AssertionError("no URL table:\n" + "".join(seen))


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=60)


def test_up_serves_the_api_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    api_port, valkey_port, mining_port = free_port(), free_port(), free_port()
    proc = start_up(tmp_path, api_port, valkey_port, mining_port=mining_port)
    try:
        out = wait_for_table(proc)
        assert f"http://127.0.0.1:{api_port}/docs" in out and f"redis://127.0.0.1:{valkey_port}" in out
        assert f"http://127.0.0.1:{mining_port}" in out
        assert httpx.get(f"http://127.0.0.1:{mining_port}/health", timeout=5).json()["status"] == "ok"
        with ApiClient(f"http://127.0.0.1:{api_port}") as api:
            assert api.get("/health").json() == {"status": "ok", "store": "ok", "valkey": "ok"}
            alice = api.new_account(coins=10)
            # due in an hour: the restarted stack (worker, miner) must not touch it during the test
            start = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            order = api.post("/orders", json=interval_order(runs=3, start_at=start), headers=alice.headers)
            assert order.status_code == 201
    finally:
        code = stop(proc)
    assert code == 0
    assert (tmp_path / "crawlcoin.db").exists() and (tmp_path / "logs" / "api.log").exists()
    assert "prefect database" in out and (tmp_path / "prefect-postgres" / "PG_VERSION").exists(), \
        "Prefect runs on the embedded PostgreSQL"
    assert not (tmp_path / "prefect-postgres" / "postmaster.pid").exists(), "Ctrl-C stopped PostgreSQL too"
    assert (tmp_path / "valkey" / "appendonlydir").is_dir(), "Valkey runs with AOF persistence"
    try:
        httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=2)
        raise AssertionError("the API still answers after crawlcoin up stopped")
    except httpx.ConnectError:
        pass

    proc = start_up(tmp_path, api_port, valkey_port, "--miner", mining_port=mining_port)
    try:
        out = wait_for_table(proc)
        assert "local-miner" in out, "--miner starts a local miner"
        deadline = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{mining_port}/health", timeout=5).json()["miners"] != 1:
            assert time.monotonic() < deadline, "the local miner never connected"
            time.sleep(0.2)
        with ApiClient(f"http://127.0.0.1:{api_port}") as api:
            login = api.post("/auth/login", json={"username": alice.username, "password": PASSWORD,
                                                  "code": pyotp.TOTP(alice.secret).at(time.time() + 30)})
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            assert api.get("/wallet", headers=headers).json()["balance"] == 7
            assert api.get(f"/orders/{order.json()['id']}", headers=headers).json()["escrow_balance"] == 3
    finally:
        assert stop(proc) == 0


def test_up_names_the_setting_when_a_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start_up(tmp_path, port, free_port())
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"port {port}" in out and "CRAWLCOIN_API_PORT" in out and "Traceback" not in out
