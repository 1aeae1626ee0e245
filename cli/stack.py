"""What `crawlcoin up` and `crawlcoin up --ha` share: ports, starting supervised children, the URL table, the
loop that keeps them running and stops them together."""

import os
import random
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from cli.supervise import Child, Supervisor, stop_all
from core.errors import CrawlcoinError
from core.valkey import valkey_sync

console = Console()


def worker_query_seconds(dispatch_lead_seconds: float) -> str:
    """How often a crawlcoin worker asks Prefect for runs (`PREFECT_WORKER_QUERY_SECONDS`): a third of the lead
    with which dispatch runs are scheduled, between 1 and 10 s (Prefect's default), so a run is claimed with two
    thirds of its lead to spare. Every poll also rewrites every deployment of the pool's queues (Prefect marks
    them ready): with 1,000 orders, polling every 10 s instead of 2 s took Prefect's PostgreSQL from 11.0 to 6.5
    CPU-s over a bench/e2e.py run."""
    return f"{max(1.0, min(10.0, dispatch_lead_seconds / 3)):g}"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def require_port(host: str, port: int, setting: str, what: str) -> None:
    if not port_free(host, port):
        raise CrawlcoinError(f"port {port} on {host} is taken, so the {what} cannot start; "
                             f"set {setting} to a free port")


def consecutive_free_ports(host: str, above: int, count: int, reserved: set[int]) -> list[int]:
    """`count` consecutive free ports just above `above`, none of them in `reserved` (which grows)."""
    start = above + 1
    while start + count <= 65536:
        block = list(range(start, start + count))
        busy = [p for p in block if p in reserved or not port_free(host, p)]
        if not busy:
            reserved.update(block)
            return block
        start = busy[-1] + 1
    raise CrawlcoinError(f"no {count} consecutive free ports above {above} on {host}")


def quiet_free_port(hosts: list[str], reserved: set[int]) -> int:
    """A port free on every one of `hosts`, below the ephemeral range (where outgoing connections take their
    local ports), so it is still free when a child restarts on it later; added to `reserved`."""
    for _ in range(2000):
        port = random.randrange(20000, 32000)
        if port not in reserved and all(port_free(h, port) for h in hosts):
            reserved.add(port)
            return port
    raise CrawlcoinError(f"no free port between 20000 and 32000 on {', '.join(hosts)}")


class Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise Stop


class Stack:
    """The children of one `crawlcoin up`: started in order, watched, listed in the URL table, stopped together."""

    def __init__(self, data_dir: Path, host: str) -> None:
        self.data_dir = data_dir
        self.host = host
        self.logs = data_dir / "logs"
        self.env = dict(os.environ, CRAWLCOIN_DATA_DIR=str(data_dir))
        self.rows: list[tuple[str, str, str]] = []
        self.children: list[Child] = []
        self.supervisor = Supervisor(console)
        signal.signal(signal.SIGTERM, _raise_stop)

    def start(self, name: str, argv: list[str], url: str, health: str, log: str, shown: str | None = None,
              extra_env: dict[str, str] | None = None, timeout: float = 90, wait: bool = True,
              ready: Callable[[], bool] | None = None, one_shot: bool = False,
              infrastructure: bool = False) -> Child:
        child = Child(name, argv, url, health, self.logs / log, ready=ready, one_shot=one_shot,
                      infrastructure=infrastructure)
        self.children.append(child)
        child.start(dict(self.env, **(extra_env or {})))
        if wait:
            child.wait_healthy(timeout=timeout)
        self.rows.append((name, shown or url, str(child.log)))
        self.supervisor.watch(child)
        return child

    def adopt(self, child: Child, shown: str) -> None:
        """A child started by other means (the embedded PostgreSQL): watched and stopped like the others."""
        self.children.append(child)
        self.supervisor.watch(child)
        self.rows.append((child.name, shown, str(child.log)))

    def start_replicas(self, kind: str, argv: list[str], port_setting: str, ports: list[int], log: str,
                       wait: bool = True) -> list[Child]:
        """N servers of one kind, started together, then waited for (start-up is CPU-bound)."""
        many = len(ports) > 1
        group = [self.start(f"{kind} {i}" if many else kind, argv, f"http://{self.host}:{port}",
                            f"http://{self.host}:{port}/health", f"{log}-{i}.log" if many else f"{log}.log",
                            shown=f"http://{self.host}:{port}" + ("" if many else " (Socket.IO)"),
                            extra_env={port_setting: str(port)}, wait=False)
                 for i, port in enumerate(ports, 1)]
        if wait:
            wait_all(group, 120)
        return group

    def keep_running(self) -> None:
        """Restart what dies until Ctrl-C or SIGTERM (Stop)."""
        while True:
            self.supervisor.check()
            time.sleep(0.5)

    def stop(self) -> None:
        stop_all(self.children)


def wait_all(children: list[Child], timeout: float) -> None:
    for child in children:
        child.wait_healthy(timeout=timeout)


def print_table(out: Console, rows: list[tuple[str, str, str]]) -> None:
    """The services, their URLs and logs, never cut: folded on a narrow terminal, one line each in a log."""
    table = Table(title="crawlcoin is up (Ctrl-C stops everything)")
    for col in ("service", "URL", "log"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    if out.is_terminal:
        out.print(table)
        return
    width = out.width  # a pipe or a file has no width: do not wrap at Rich's default of 80 columns
    out.width = max(width, 4 + sum(3 + max(len(r[i]) for r in rows) for i in range(3)))
    try:
        out.print(table)
    finally:
        out.width = width


def hide_password(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://…@{rest.split('@', 1)[1]}"
    return url


def valkey_answers(url: str) -> bool:
    """Valkey is up and has loaded its AOF: an authenticated PING answers."""
    try:
        with valkey_sync(url, socket_timeout=2, socket_connect_timeout=2) as client:
            return bool(client.ping())
    except RedisError:
        return False
