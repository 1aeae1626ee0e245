"""The replicated infrastructure of `crawlcoin up --ha` on one machine: Valkey (primary, replica, three Sentinels)
and three Cassandra nodes, with the settings of deploy/ha/compose.yaml.

Their ports are chosen once per data directory and kept in `ha-ports.json`: Sentinel and Cassandra remember
their peers by address and port, so a second start must use the same ones.
"""

import json
import os
import shutil
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from cli.stack import port_free, quiet_free_port
from core.errors import CrawlcoinError

SENTINEL_PRIMARY = "crawlcoin"
# Linux routes all of 127.0.0.0/8 to loopback: each node has an address of its own and the same ports.
CASSANDRA_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
CASSANDRA_TOKENS = ("-9223372036854775808", "-3074457345618258603", "3074457345618258602")  # evenly spread
CASSANDRA_HEAP = "448M"  # three nodes share a small machine
START_SH = Path(__file__).resolve().parent.parent / "scripts" / "cassandra" / "start.sh"
PORTS_FILE = "ha-ports.json"


@dataclass
class HaPorts:
    cassandra_cql: int
    cassandra_storage: int
    valkey_replica: int
    sentinels: list[int]


def ha_ports(data_dir: Path, host: str, valkey_primary: int) -> HaPorts:
    """The ports of this data directory's nodes, chosen (below the ephemeral range) on its first start."""
    path = data_dir / PORTS_FILE
    if path.exists():
        ports = HaPorts(**json.loads(path.read_text()))
        everywhere = list(CASSANDRA_ADDRESSES)
        wanted = [(ports.cassandra_cql, everywhere), (ports.cassandra_storage, everywhere),
                  *[(p, [host]) for p in (ports.valkey_replica, *ports.sentinels)]]
        for port, hosts in wanted:
            for h in hosts:
                if not port_free(h, port):
                    raise CrawlcoinError(f"port {port} on {h}, kept in {path} for this data directory's nodes, is "
                                         f"taken: stop what uses it (a crawlcoin up --ha still running?)")
        return ports
    reserved = {valkey_primary}
    cql = quiet_free_port(list(CASSANDRA_ADDRESSES), reserved)
    storage = quiet_free_port(list(CASSANDRA_ADDRESSES), reserved)
    ports = HaPorts(cql, storage, quiet_free_port([host], reserved), [quiet_free_port([host], reserved)
                                                                       for _ in range(3)])
    path.write_text(json.dumps(asdict(ports)))
    return ports


def sentinel_url(host: str, ports: HaPorts, password: str, db: int, for_prefect: bool = False) -> str:
    hosts = ",".join(f"{host}:{p}" for p in ports.sentinels)
    url = f"redis+sentinel://:{password}@{hosts}/{SENTINEL_PRIMARY}/{db}"
    return url + f"?sentinel_password={password}" if for_prefect else url  # prefect-redis reads it from the query


def _write_once(path: Path, lines: list[str]) -> Path:
    """A config file (0600: it holds the password) written on the first start only: Sentinel rewrites the files
    of the nodes it reconfigures and its own, and a restart must keep what it learnt (who is primary now)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
    return path


def valkey_data_config(root: Path, name: str, host: str, port: int, password: str,
                       replica_of: int | None = None) -> Path:
    node = root / name
    lines = [f"bind {host}", f"port {port}", f"dir {node}", "protected-mode yes", "daemonize no", 'save ""',
             "appendonly yes", "appendfsync everysec", 'logfile ""', "loglevel notice",
             f"requirepass {password}", f"masterauth {password}"]
    if replica_of is not None:
        lines.append(f"replicaof {host} {replica_of}")
    return _write_once(node / "valkey.conf", lines)


def sentinel_config(root: Path, i: int, host: str, port: int, primary: int, password: str) -> Path:
    node = root / f"sentinel-{i}"
    return _write_once(node / "sentinel.conf", [
        f"bind {host}", f"port {port}", f"dir {node}", "daemonize no", 'logfile ""',
        f"requirepass {password}", f"sentinel sentinel-pass {password}",
        f"sentinel monitor {SENTINEL_PRIMARY} {host} {primary} 2",
        f"sentinel auth-pass {SENTINEL_PRIMARY} {password}",
        f"sentinel down-after-milliseconds {SENTINEL_PRIMARY} 5000",
        f"sentinel failover-timeout {SENTINEL_PRIMARY} 60000"])


def require_java() -> None:
    home = os.environ.get("JAVA_HOME")
    if (home and Path(home, "bin", "java").exists()) or shutil.which("java"):
        return
    raise CrawlcoinError("crawlcoin up --ha runs three Cassandra nodes, which need Java 17, and `java` is not "
                         "installed: install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set "
                         "JAVA_HOME")


def cassandra_jars(log: Path) -> None:
    """The Cassandra jars in their cache (fetched with Maven the first time), or one clear error."""
    if not START_SH.exists():
        raise CrawlcoinError(f"crawlcoin up --ha starts Cassandra with scripts/cassandra/start.sh of a crawlcoin "
                             f"source checkout, not found at {START_SH}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        done = subprocess.run(["bash", str(START_SH), "--jars-only"], stdout=subprocess.DEVNULL, stderr=out,
                              stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise CrawlcoinError(f"the Cassandra jars could not be fetched: {last[0]} (see {log})")


def cassandra_argv(data_dir: Path, i: int, ports: HaPorts) -> list[str]:
    seeds = ",".join(f"{a}:{ports.cassandra_storage}" for a in CASSANDRA_ADDRESSES)  # all three: any starts alone
    return ["bash", str(START_SH), "--foreground", "--dir", str(data_dir / "cassandra" / f"node-{i + 1}"),
            "--listen-address", CASSANDRA_ADDRESSES[i], "--port", str(ports.cassandra_cql),
            "--storage-port", str(ports.cassandra_storage), "--seeds", seeds,
            "--initial-token", CASSANDRA_TOKENS[i], "--cluster-name", "crawlcoin",
            "--heap", CASSANDRA_HEAP, "--heap-min", "256M"]


def cassandra_store_url(ports: HaPorts) -> str:
    return f"cassandra://{','.join(CASSANDRA_ADDRESSES)}:{ports.cassandra_cql}/crawlcoin?replication=simple:3"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
