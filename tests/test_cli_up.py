"""`crawlcoin up`, the README's run command, started as a subprocess and driven over HTTP."""

import base64
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pyotp
import pytest
import redis

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


def prefect_auth(data_dir: Path) -> dict[str, str]:
    """The header the embedded Prefect server asks for: Basic auth with the auth string of the data dir."""
    secret = json.loads((data_dir / "secrets.json").read_text())["prefect_auth_string"]
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


class ConsoleLines:
    """What `crawlcoin up` prints after its table, read as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every child process of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append((int(entry.name), argv))
    return found


def stop(proc: subprocess.Popen[str]) -> int:
    """Ctrl-C; `crawlcoin up` stops its children one after another, each with up to 15 s of grace, which on a
    busy CI machine has taken over a minute."""
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=180)
    if proc.stdout is not None and not proc.stdout.closed:  # shown with a failing test's output: why it stopped
        os.set_blocking(proc.stdout.fileno(), False)  # a grandchild may still hold the pipe: take what is there
        try:
            rest = proc.stdout.read() or ""
        except (OSError, TypeError):
            rest = ""
        print(f"crawlcoin up exited with {code}; what it printed after its table:\n{rest[-6000:]}")
    return code


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
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700, "the data directory is the owner's only once stopped"


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


def test_up_restarts_a_killed_valkey_and_postgres_and_refuses_strangers(tmp_path: Path) -> None:
    api_port, valkey_port, prefect_port = free_port(), free_port(), free_port()
    data = tmp_path / "data"
    proc = start_up(data, api_port, valkey_port, CRAWLCOIN_PREFECT_PORT=str(prefect_port))
    try:
        wait_for_table(proc)
        console = ConsoleLines(proc)
        secrets = json.loads((data / "secrets.json").read_text())

        # Only the owner reads the data directory (as root, the embedded PostgreSQL's own user may traverse it,
        # never list it), the secrets, the store and the logs.
        assert stat.S_IMODE(data.stat().st_mode) == (0o711 if os.geteuid() == 0 else 0o700)
        private = [data / "secrets.json", data / "crawlcoin.db", *sorted((data / "logs").glob("*.log")),
                   data / "valkey" / "valkey.conf"]
        assert len(private) > 6
        modes = {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in private}
        assert set(modes.values()) == {"0o600"}, modes

        # Valkey and Prefect refuse a client without the credentials; the children have them in their
        # environment, never on a command line.
        with pytest.raises(redis.exceptions.AuthenticationError, match="(?i)auth"):
            redis.Redis(port=valkey_port).ping()
        keeper = redis.Redis(port=valkey_port, password=secrets["valkey_password"])
        assert keeper.ping()
        prefect = f"http://127.0.0.1:{prefect_port}/api"
        assert httpx.post(f"{prefect}/deployments/filter", json={}, timeout=10).status_code == 401
        assert httpx.post(f"{prefect}/deployments/filter", json={}, headers={"Authorization": "Basic eDp5"},
                          timeout=10).status_code == 401
        assert httpx.post(f"{prefect}/deployments/filter", json={}, headers=prefect_auth(data),
                          timeout=10).status_code == 200
        cmdlines = [argv for _, argv in children_of(proc.pid)]
        assert len(cmdlines) >= 6 and not any(
            secrets["valkey_password"] in a or secrets["prefect_auth_string"] in a for a in cmdlines), cmdlines

        # SIGKILL Valkey: the supervisor says so, starts it on the same port and data, says when it is back.
        keeper.set("kept", "yes")
        time.sleep(1.5)  # appendfsync everysec
        [(valkey_pid, _)] = [(pid, argv) for pid, argv in children_of(proc.pid) if "valkey" in argv.split()[0]]
        os.kill(valkey_pid, signal.SIGKILL)
        console.wait_for(r"^valkey died \(killed by SIGKILL\); restarting in \d+ s$", 10)
        console.wait_for(r"^valkey is back \(down [\d.]+ s\)$", 30)
        assert redis.Redis(port=valkey_port, password=secrets["valkey_password"]).get("kept") == b"yes", \
            "the restarted Valkey replayed its AOF"
        with ApiClient(f"http://127.0.0.1:{api_port}") as api:
            deadline = time.monotonic() + 30
            while api.get("/health").json().get("valkey") != "ok":
                assert time.monotonic() < deadline, "the API never saw Valkey again"
                time.sleep(0.5)

        # A checkpoint (every 5 minutes) leaves Prefect's PostgreSQL running: as root it runs as a user of its
        # own, which opens its files by their full path when it checkpoints.
        pid_file = (data / "prefect-postgres" / "postmaster.pid").read_text().splitlines()
        pg_pid = int(pid_file[0])
        with psycopg.connect(host=pid_file[4], port=int(pid_file[3]), user="postgres", dbname="prefect",
                             autocommit=True, connect_timeout=10) as pg:
            pg.execute("CHECKPOINT")
        assert not any(line.startswith("prefect database died") for line in console.lines)
        assert int((data / "prefect-postgres" / "postmaster.pid").read_text().split()[0]) == pg_pid

        # SIGKILL the PostgreSQL of Prefect: restarted too, and Prefect answers again.
        os.kill(pg_pid, signal.SIGKILL)
        console.wait_for(r"^prefect database died \(exited\); restarting in \d+ s$", 10)
        console.wait_for(r"^prefect database is back", 60)
        deadline = time.monotonic() + 60
        while httpx.post(f"{prefect}/deployments/filter", json={}, headers=prefect_auth(data),
                         timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "Prefect never reached its database again"
            time.sleep(1)
        assert proc.poll() is None, "crawlcoin up carried on"
        assert "Traceback" not in "\n".join(console.lines)
    finally:
        assert stop(proc) == 0
