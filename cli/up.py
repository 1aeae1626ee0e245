"""`crawlcoin up`: start every service as a child process, wait until healthy, keep them running, stop them
together."""

import os
import sys
from pathlib import Path

from cli.demo import place_demo_order, prepare_site, refuse_in_production
from cli.embedded import embedded_secrets, prefect_env, private_data_dir, start_postgres, valkey_argv, valkey_config
from cli.haproxy import Pool, find_haproxy, wait_all_up, write_config
from cli.local_miner import local_miner_token
from cli.stack import (
    Stack,
    Stop,
    consecutive_free_ports,
    console,
    free_port,
    hide_password,
    print_table,
    require_port,
    valkey_answers,
    worker_query_seconds,
)
from cli.status import METRICS_TARGETS, write_targets
from cli.supervise import PostgresChild
from core.errors import CrawlcoinError
from core.settings import Settings
from dashboard.launch import health_url as dashboard_health_url
from dashboard.launch import streamlit_argv
from dashboard.launch import url as dashboard_url

__all__ = ["print_table", "run_stack"]


def run_stack(settings: Settings, miner: bool = False, demo: bool = False, mining_servers: int = 1,
              result_servers: int = 1, workers: int = 1) -> int:
    data_dir = settings.data_dir.expanduser().resolve()
    os.umask(0o077)  # everything crawlcoin and its children write here is the owner's only
    private_data_dir(data_dir)
    stack = Stack(data_dir, settings.host)
    env, rows, start, host = stack.env, stack.rows, stack.start, settings.host

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
            require_port(host, port, setting, what)
        haproxy = find_haproxy() if max(mining_servers, result_servers) > 1 else None
        # Behind HAProxy the servers listen on consecutive free ports above the public one.
        reserved = {port for port, _, _ in ports}
        mining_ports = ([settings.mining_port] if mining_servers == 1 else
                        consecutive_free_ports(host, settings.mining_port, mining_servers, reserved))
        results_ports = ([settings.results_port] if result_servers == 1 else
                         consecutive_free_ports(host, settings.results_port, result_servers, reserved))

        secrets = embedded_secrets(data_dir)
        if settings.redis_url:
            rows.append(("valkey (external)", hide_password(settings.redis_url), "-"))
        else:
            shown_url = f"redis://{host}:{settings.valkey_port}/0"
            env["CRAWLCOIN_REDIS_URL"] = f"redis://:{secrets.valkey_password}@{host}:{settings.valkey_port}/0"
            config = valkey_config(data_dir / "valkey", host, settings.valkey_port, secrets.valkey_password)
            start("valkey", valkey_argv(config), shown_url, "", "valkey.log", timeout=60,
                  shown=f"{shown_url} (password in {data_dir / 'secrets.json'})",
                  ready=lambda: valkey_answers(env["CRAWLCOIN_REDIS_URL"]), infrastructure=True)

        if settings.prefect_api_url:
            rows.append(("prefect (external)", settings.prefect_api_url, "-"))
        else:
            prefect_home = data_dir / "prefect"
            prefect_home.mkdir(parents=True, exist_ok=True)
            prefect_url = f"http://{host}:{settings.prefect_port}"
            env.update({k: v for k, v in prefect_env(prefect_home).items() if k.startswith("PREFECT_")})
            env["PREFECT_API_AUTH_STRING"] = secrets.prefect_auth_string  # clients: workers, `prefect` CLI
            if settings.prefect_database == "postgres":
                pgdata = data_dir / "prefect-postgres"
                try:
                    postgres, env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = start_postgres(pgdata)
                except Exception as e:
                    raise CrawlcoinError(f"the embedded PostgreSQL for Prefect did not start ({e}); see "
                                         f"{pgdata / 'log'}, or set CRAWLCOIN_PREFECT_DATABASE=sqlite") from None
                stack.adopt(PostgresChild("prefect database", pgdata, postgres), "PostgreSQL (embedded, Unix socket)")
            start("prefect server", [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", host,
                                     "--port", str(settings.prefect_port)],
                  prefect_url, f"{prefect_url}/api/health", "prefect.log", timeout=180,
                  shown=f"{prefect_url} (UI; auth string in {data_dir / 'secrets.json'})",
                  extra_env={"PREFECT_SERVER_API_AUTH_STRING": secrets.prefect_auth_string}, infrastructure=True)
            env["PREFECT_API_URL"] = f"{prefect_url}/api"

        crawlcoin = [sys.executable, "-m", "cli.main"]
        base = f"http://{host}:{settings.api_port}"
        start("api", crawlcoin + ["serve", "api"], f"{base}/docs", f"{base}/health", "api.log")
        worker_ports = ([settings.worker_metrics_port + i for i in range(workers)] if settings.worker_metrics_port
                        else consecutive_free_ports(host, max(p for p, _, _ in ports), workers, reserved))
        for i, metrics_port in enumerate(worker_ports, 1):
            require_port(host, metrics_port, "CRAWLCOIN_WORKER_METRICS_PORT", "worker's metrics endpoint")
            start(f"worker {i}" if workers > 1 else "worker", crawlcoin + ["worker"],
                  f"Prefect work pool {settings.work_pool}; http://{host}:{metrics_port}/metrics", "",
                  f"worker-{i}.log" if workers > 1 else "worker.log",
                  extra_env={"PREFECT_WORKER_QUERY_SECONDS": worker_query_seconds(settings.dispatch_lead_seconds),
                             "CRAWLCOIN_WORKER_METRICS_PORT": str(metrics_port)})
        stack.start_replicas("mining server", crawlcoin + ["serve", "mining"], "CRAWLCOIN_MINING_PORT", mining_ports,
                       "mining")
        stack.start_replicas("result server", crawlcoin + ["serve", "results"], "CRAWLCOIN_RESULTS_PORT", results_ports,
                       "results")
        mining_url = f"http://{host}:{settings.mining_port}"
        results_url = f"http://{host}:{settings.results_port}"
        pools = [Pool(name, host, public, tuple(backends)) for name, public, backends in
                 (("mining", settings.mining_port, mining_ports), ("results", settings.results_port, results_ports))
                 if len(backends) > 1]
        if haproxy is not None:
            [stats_port] = consecutive_free_ports(host, pools[0].backends[-1], 1, reserved)
            config = write_config(data_dir / "haproxy.cfg", pools, stats_port, haproxy)
            start("haproxy", [haproxy, "-db", "-f", str(config)], f"http://{host}:{stats_port}/ (stats)",
                  f"http://{host}:{pools[0].port}/health", "haproxy.log")
            rows.append(("haproxy config", str(config), "-"))
        for what, url, count in (("mining servers", mining_url, mining_servers),
                                 ("result servers", results_url, result_servers)):
            if count > 1:
                rows.append((what, f"{url} (Socket.IO via HAProxy to {count} servers)", "-"))
        # The addresses the dashboard shows in its commands and links: the ones started here, unless set.
        addresses = {"mining_url": mining_url, "results_url": results_url}
        if not settings.prefect_api_url:
            addresses["prefect_ui_url"] = f"http://{host}:{settings.prefect_port}"
        start("dashboard", streamlit_argv(settings), dashboard_url(settings), dashboard_health_url(settings),
              "dashboard.log", extra_env={f"CRAWLCOIN_{k.upper()}": v for k, v in addresses.items()
                                          if k not in settings.model_fields_set})
        if miner:
            username, token = local_miner_token(base, data_dir)
            argv = crawlcoin + ["mine", "--server", mining_url] + (["--allow-private-targets"] if demo else [])
            start("miner", argv, f"earning for {username!r}", "", "miner.log",
                  extra_env={"CRAWLCOIN_MINER_TOKEN": token})
        demo_note = None
        if demo:
            page_port = free_port(host)
            site = prepare_site(data_dir)
            page_url = f"http://{host}:{page_port}/index.html"
            start("demo page", [sys.executable, "-m", "http.server", str(page_port), "--bind", host, "--directory",
                                str(site)], page_url, page_url, "demo-page.log")
            demo_note = place_demo_order(base, page_url)
            out = data_dir / "demo-results"
            start("result client", crawlcoin + ["results", "--server", results_url, "--order",
                                                demo_note["order_id"], "--out", str(out)],
                  f"writing into {out}", "", "demo-results.log", one_shot=True,  # ends with the demo order
                  extra_env={"CRAWLCOIN_RESULTS_TOKEN": demo_note["results_token"]})
        targets = write_targets(data_dir / METRICS_TARGETS, host, {
            "api": [settings.api_port], "worker": worker_ports, "mining": mining_ports, "results": results_ports})
        rows.append(("metrics", f"/metrics on each service; Prometheus file_sd targets in {targets}", "-"))
        rows.append(("store", _display_store(settings), "-"))
        if haproxy is not None:
            wait_all_up(host, stats_port)  # else the first requests through HAProxy may meet its 503
        print_table(console, rows)
        if demo_note is not None:
            console.print(
                f"[bold]Demo:[/] order {demo_note['order_id']} fetches the demo page every 5 s, 12 times, "
                f"starting in 10 s. Watch the files arrive in {data_dir / 'demo-results'}.\n"
                f"Sign in to the dashboard as [bold]{demo_note['username']}[/] with password "
                f"[bold]{demo_note['password']}[/] and TOTP secret {demo_note['secret']} "
                f"(or compute a code: python -c \"import pyotp; print(pyotp.TOTP('{demo_note['secret']}').now())\").",
                soft_wrap=True)  # one line each, never cut: a command broken in two does not paste
        stack.keep_running()
    except (KeyboardInterrupt, Stop):
        console.print("stopping…")
        return 0
    finally:
        stack.stop()
    return 0


def _display_store(settings: Settings) -> str:
    return hide_password(settings.resolved_store_url)
