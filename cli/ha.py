"""`crawlcoin up --ha`: deploy/ha/compose.yaml's topology as processes on one machine, for people without Docker.

Three Cassandra nodes (RF 3), a Valkey primary, replica and three Sentinels, PostgreSQL under two Prefect API
servers and one process of Prefect's services (messaging, leases and task queue in Valkey through the Sentinels),
two API replicas, two mining and two result servers, two workers, HAProxy in front of the API, mining, results and
Prefect, and the dashboard. Every child is supervised like those of `crawlcoin up`.
"""

import functools
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from cli.embedded import embedded_secrets, prefect_env, private_data_dir, start_postgres, valkey_argv
from cli.ha_nodes import (
    CASSANDRA_ADDRESSES,
    HaPorts,
    cassandra_argv,
    cassandra_jars,
    cassandra_store_url,
    ha_ports,
    port_open,
    require_java,
    sentinel_config,
    sentinel_url,
    valkey_data_config,
)
from cli.haproxy import Pool, find_haproxy, wait_all_up, write_config
from cli.stack import (
    Stack,
    Stop,
    console,
    print_table,
    quiet_free_port,
    require_port,
    valkey_answers,
    wait_all,
    worker_query_seconds,
)
from cli.status import METRICS_TARGETS, write_targets
from cli.supervise import Child, PostgresChild
from core.errors import CrawlcoinError
from core.settings import Settings
from dashboard.launch import health_url as dashboard_health_url
from dashboard.launch import streamlit_argv
from dashboard.launch import url as dashboard_url

REPLICAS = 2
CASSANDRA_START_SECONDS = 300.0  # three JVMs starting together on two cores


def _check_setup(settings: Settings) -> str:
    """What --ha needs, each missing piece one clear line; returns HAProxy's path."""
    external = [name for name, value in (("CRAWLCOIN_STORE_URL", settings.store_url),
                                         ("CRAWLCOIN_REDIS_URL", settings.redis_url),
                                         ("PREFECT_API_URL", settings.prefect_api_url)) if value]
    if external:
        raise CrawlcoinError(f"crawlcoin up --ha starts its own store, Valkey and Prefect: unset {', '.join(external)}")
    haproxy = find_haproxy("crawlcoin up --ha puts HAProxy in front of the replicas", "")
    require_java()
    if importlib.util.find_spec("prefect_redis") is None:
        raise CrawlcoinError("crawlcoin up --ha runs two Prefect API servers, whose messaging goes through Valkey "
                             "with prefect-redis, which is not installed: pip install 'crawlcoin[ha]'")
    for port, setting, what in ((settings.api_port, "CRAWLCOIN_API_PORT", "API"),
                                (settings.mining_port, "CRAWLCOIN_MINING_PORT", "mining servers"),
                                (settings.results_port, "CRAWLCOIN_RESULTS_PORT", "result servers"),
                                (settings.dashboard_port, "CRAWLCOIN_DASHBOARD_PORT", "dashboard"),
                                (settings.valkey_port, "CRAWLCOIN_VALKEY_PORT", "Valkey primary"),
                                (settings.prefect_port, "CRAWLCOIN_PREFECT_PORT", "Prefect API")):
        require_port(settings.host, port, setting, what)
    return haproxy


def run_ha(settings: Settings) -> int:
    data_dir = settings.data_dir.expanduser().resolve()
    os.umask(0o077)
    private_data_dir(data_dir)
    host = settings.host
    haproxy = _check_setup(settings)
    stack = Stack(data_dir, host)
    began = time.monotonic()
    try:
        ports = ha_ports(data_dir, host, settings.valkey_port)
        reserved = {settings.api_port, settings.mining_port, settings.results_port, settings.dashboard_port,
                    settings.valkey_port, settings.prefect_port, ports.cassandra_cql, ports.cassandra_storage,
                    ports.valkey_replica, *ports.sentinels}
        secrets = embedded_secrets(data_dir)
        cassandra_jars(stack.logs / "cassandra-jars.log")
        nodes = _start_cassandra(stack, ports)  # the slowest: the rest starts while the JVMs boot
        _start_valkey(stack, settings, ports, secrets.valkey_password)
        prefect_ports = [quiet_free_port([host], reserved) for _ in range(REPLICAS)]
        _start_prefect(stack, settings, ports, prefect_ports, secrets.valkey_password, secrets.prefect_auth_string)
        wait_all(nodes, CASSANDRA_START_SECONDS)
        stack.env["CRAWLCOIN_STORE_URL"] = cassandra_store_url(ports)
        _create_schema(stack)

        backends = {kind: [quiet_free_port([host], reserved) for _ in range(REPLICAS)]
                    for kind in ("api", "mining", "results")}
        pools = [Pool("api", host, settings.api_port, tuple(backends["api"]), sticky=False, forwardfor=True),
                 Pool("mining", host, settings.mining_port, tuple(backends["mining"])),
                 Pool("results", host, settings.results_port, tuple(backends["results"])),
                 Pool("prefect", host, settings.prefect_port, tuple(prefect_ports), health="/api/health",
                      sticky=False)]
        stats_port = quiet_free_port([host], reserved)
        config = write_config(data_dir / "haproxy.cfg", pools, stats_port, haproxy)
        public = f"http://{host}:{settings.prefect_port}"
        stack.start("haproxy", [haproxy, "-db", "-f", str(config)], f"http://{host}:{stats_port}/ (stats)",
                    f"{public}/api/health", "haproxy.log", infrastructure=True)
        stack.rows.append(("haproxy config", str(config), "-"))
        stack.env["PREFECT_API_URL"] = f"{public}/api"  # every crawlcoin process reaches Prefect through HAProxy
        stack.rows.append(("prefect", f"{public} (UI and API via HAProxy to {REPLICAS} servers; auth string in "
                                      f"{data_dir / 'secrets.json'})", "-"))

        crawlcoin = [sys.executable, "-m", "cli.main"]
        worker_ports = [quiet_free_port([host], reserved) for _ in range(REPLICAS)]
        started = stack.start_replicas("api", crawlcoin + ["serve", "api"], "CRAWLCOIN_API_PORT", backends["api"],
                                       "api", wait=False)
        started += [stack.start(f"worker {i}", crawlcoin + ["worker"],
                                f"Prefect work pool {settings.work_pool}; http://{host}:{port}/metrics", "",
                                f"worker-{i}.log", wait=False,
                                extra_env={"PREFECT_WORKER_QUERY_SECONDS":
                                           worker_query_seconds(settings.dispatch_lead_seconds),
                                           "CRAWLCOIN_WORKER_METRICS_PORT": str(port)})
                    for i, port in enumerate(worker_ports, 1)]
        started += stack.start_replicas("mining server", crawlcoin + ["serve", "mining"], "CRAWLCOIN_MINING_PORT",
                                        backends["mining"], "mining", wait=False)
        started += stack.start_replicas("result server", crawlcoin + ["serve", "results"], "CRAWLCOIN_RESULTS_PORT",
                                        backends["results"], "results", wait=False)
        wait_all(started, 180)
        urls = {kind: f"http://{host}:{port}" for kind, port in (("api", settings.api_port),
                                                                 ("mining", settings.mining_port),
                                                                 ("results", settings.results_port))}
        stack.rows += [("api", f"{urls['api']}/docs (via HAProxy to {REPLICAS} replicas)", "-"),
                       ("mining servers", f"{urls['mining']} (Socket.IO via HAProxy to {REPLICAS} servers)", "-"),
                       ("result servers", f"{urls['results']} (Socket.IO via HAProxy to {REPLICAS} servers)", "-")]
        addresses = {"mining_url": urls["mining"], "results_url": urls["results"], "prefect_ui_url": public}
        stack.start("dashboard", streamlit_argv(settings), dashboard_url(settings), dashboard_health_url(settings),
                    "dashboard.log", extra_env={f"CRAWLCOIN_{k.upper()}": v for k, v in addresses.items()
                                                if k not in settings.model_fields_set})
        targets = write_targets(data_dir / METRICS_TARGETS, host, {
            "api": backends["api"], "worker": worker_ports, "mining": backends["mining"],
            "results": backends["results"]})
        stack.rows.append(("metrics", f"/metrics on each service; Prometheus file_sd targets in {targets}", "-"))
        stack.rows.append(("store", f"Cassandra, 3 nodes on {', '.join(CASSANDRA_ADDRESSES)}:{ports.cassandra_cql}, "
                                    "replication factor 3", "-"))
        wait_all_up(host, stats_port)  # else the first requests through HAProxy may meet its 503
        print_table(console, stack.rows)
        console.print(f"up in {time.monotonic() - began:.0f} s")
        stack.keep_running()
    except KeyboardInterrupt:
        console.print("stopping… (SIGINT)")
    except Stop:
        console.print("stopping… (SIGTERM)")
    finally:
        stack.stop()
    return 0


def _start_cassandra(stack: Stack, ports: HaPorts) -> list[Child]:
    return [stack.start(f"cassandra {i + 1}", cassandra_argv(stack.data_dir, i, ports),
                        f"{address}:{ports.cassandra_cql} (CQL)", "", f"cassandra-{i + 1}.log", wait=False,
                        ready=functools.partial(port_open, address, ports.cassandra_cql), infrastructure=True,
                        extra_env={"CRAWLCOIN_CASSANDRA_JVM_OPTS": "-Dcassandra.skip_wait_for_gossip_to_settle=0"})
            for i, address in enumerate(CASSANDRA_ADDRESSES)]


def _start_valkey(stack: Stack, settings: Settings, ports: HaPorts, password: str) -> None:
    host, root, primary = settings.host, stack.data_dir / "valkey-ha", settings.valkey_port
    data_nodes = (("valkey primary", primary, None), ("valkey replica", ports.valkey_replica, primary))
    for name, port, replica_of in data_nodes:
        config = valkey_data_config(root, name.split()[1], host, port, password, replica_of)
        url = f"redis://:{password}@{host}:{port}/0"
        stack.start(name, valkey_argv(config), f"redis://{host}:{port}", "", f"{name.replace(' ', '-')}.log",
                    timeout=60, ready=functools.partial(valkey_answers, url), infrastructure=True)
    for i, port in enumerate(ports.sentinels, 1):
        config = sentinel_config(root, i, host, port, primary, password)
        url = f"redis://:{password}@{host}:{port}/0"
        stack.start(f"valkey sentinel {i}", [*valkey_argv(config), "--sentinel"], f"redis://{host}:{port}", "",
                    f"valkey-sentinel-{i}.log", timeout=60, ready=functools.partial(valkey_answers, url),
                    infrastructure=True)
    stack.env["CRAWLCOIN_REDIS_URL"] = sentinel_url(host, ports, password, 0)
    stack.rows.append(("valkey", f"redis+sentinel://{host}:{',…:'.join(map(str, ports.sentinels))}/crawlcoin/0 "
                                 f"(password in {stack.data_dir / 'secrets.json'})", "-"))


def _start_prefect(stack: Stack, settings: Settings, ports: HaPorts, api_ports: list[int], valkey_password: str,
                   auth_string: str) -> None:
    """PostgreSQL, its schema once, two API servers without services and one process running the services."""
    host, env = settings.host, stack.env
    home = stack.data_dir / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    env.update({k: v for k, v in prefect_env(home).items() if k.startswith("PREFECT_")})
    env["PREFECT_API_AUTH_STRING"] = auth_string
    pgdata = stack.data_dir / "prefect-postgres"
    try:
        postgres, database_url = start_postgres(pgdata)
    except Exception as e:
        raise CrawlcoinError(f"the embedded PostgreSQL for Prefect did not start ({e}); see {pgdata / 'log'}") from None
    stack.adopt(PostgresChild("prefect database", pgdata, postgres), "PostgreSQL (embedded, Unix socket)")
    server_env = {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": sentinel_url(host, ports, valkey_password, 1, for_prefect=True),
        "PREFECT_SERVER_DOCKET_URL": sentinel_url(host, ports, valkey_password, 2, for_prefect=True),
        "PREFECT_UI_API_URL": f"http://{host}:{settings.prefect_port}/api",
        "PREFECT_SERVER_API_AUTH_STRING": auth_string,
    }
    prefect = str(Path(sys.executable).parent / "prefect")
    log = stack.logs / "prefect-migrate.log"
    with open(log, "ab") as out:
        done = subprocess.run([prefect, "server", "database", "upgrade", "-y"], env=dict(env, **server_env),
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise CrawlcoinError(f"`prefect server database upgrade` failed (exit code {done.returncode}); see {log}")
    servers = []
    for i, port in enumerate(api_ports, 1):
        url = f"http://{host}:{port}"
        # Block types are registered by the first server: two doing it at the same first start collide.
        extra = dict(server_env, **({} if i == 1 else {"PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false"}))
        servers.append(stack.start(f"prefect server {i}", [prefect, "server", "start", "--host", host, "--port",
                                                           str(port), "--no-services"],
                                   url, f"{url}/api/health", f"prefect-{i}.log", wait=False, extra_env=extra,
                                   infrastructure=True))
    stack.start("prefect services", [prefect, "server", "services", "start"], "scheduler and the other services, "
                "once", "", "prefect-services.log", infrastructure=True,
                extra_env=dict(server_env, PREFECT_SERVER_REGISTER_BLOCKS_ON_START="false",
                               # The scheduler and the other loops run whatever is enabled, but the command
                               # refuses to start when none of its event services is (the lean settings turn
                               # them off): the task run recorder is the cheapest one (crawlcoin runs no tasks).
                               PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED="true"))
    wait_all(servers, 240)


def _create_schema(stack: Stack, timeout: float = 240) -> None:
    """The keyspace (RF 3) and tables, once, before the roles start: all of them doing it at once on a cluster
    still settling only time out."""
    code = ("from core.settings import Settings; from core.storage import open_store; "
            "open_store(Settings().resolved_store_url).close()")
    log = stack.logs / "store-schema.log"
    deadline = time.monotonic() + timeout
    while True:
        with open(log, "ab") as out:
            done = subprocess.run([sys.executable, "-c", code], env=stack.env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise CrawlcoinError(f"the store's schema could not be created on the Cassandra cluster; see {log}")
        time.sleep(3)
