"""The children of `crawlcoin up` and the loop that keeps them running.

A child that dies is started again after a backoff (1 s, 2 s, 4 s, … up to 30 s while it keeps
dying soon after each start), with one console line when it dies and one when it is back. Only a
crash loop — `GIVE_UP_AFTER` deaths in a row, each within `FAST_FAILURE_SECONDS` of its start —
stops the stack, with the child's last log lines. A one-shot helper (the demo's result client) is
done when it exits with code 0: it is reported once and left alone; any other exit restarts it.
"""

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from cli.embedded import postgres_may_enter, private, restart_postgres
from core.errors import CrawlcoinError

FAST_FAILURE_SECONDS = 30.0
GIVE_UP_AFTER = 5
BACKOFF_SECONDS = (1, 2, 4, 8, 15, 30)
START_TIMEOUT_SECONDS = 180.0
SETTLE_SECONDS = 3.0  # a child without a health check counts as back once it has lived this long
STOP_GRACE_SECONDS = 15.0  # a child asked to stop has this long to finish its work before it is killed


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass
class Child:
    name: str
    argv: list[str]
    url: str
    health_url: str
    log: Path
    ready: Callable[[], bool] | None = None  # health check other than an HTTP 200 from health_url
    one_shot: bool = False  # a helper with an end: exit code 0 means its work is done, not that it died
    infrastructure: bool = False  # what the services depend on (Valkey, Prefect): stopped after them
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    started_at: float = field(default=0.0, repr=False)

    def start(self, env: dict[str, str] | None = None) -> None:
        if env is not None:
            self.env = env
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        self.started_at = time.monotonic()

    def exited(self) -> str | None:
        """How the child ended (exit code or signal), or None while it runs."""
        assert self.process is not None
        code = self.process.poll()
        return None if code is None else describe_exit(code)

    def is_ready(self) -> bool:
        if self.ready is not None:
            return self.ready()
        if not self.health_url:
            return time.monotonic() - self.started_at >= SETTLE_SECONDS
        try:
            return httpx.get(self.health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float) -> None:
        if not self.health_url and self.ready is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited() is not None:
                raise CrawlcoinError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise CrawlcoinError(f"{self.name} did not become healthy in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def ask_to_stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait for a child asked to stop until `deadline` (monotonic), then kill it."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.ask_to_stop()
        self.wait_stopped(time.monotonic() + STOP_GRACE_SECONDS)


class PostgresChild(Child):
    """The embedded PostgreSQL of Prefect: `pg_ctl` daemonizes it, so it is watched through its pid file."""

    def __init__(self, name: str, pgdata: Path, server: Any) -> None:
        super().__init__(name, [], "", "", pgdata / "log", infrastructure=True)
        self.server = server
        self.started_at = time.monotonic()

    def start(self, env: dict[str, str] | None = None) -> None:
        restart_postgres(self.server)
        self.started_at = time.monotonic()

    def exited(self) -> str | None:
        info = self.server._postmaster_info
        return None if info is not None and info.is_running() else "exited"

    def is_ready(self) -> bool:
        return self.exited() is None

    def kill(self) -> None:
        info = self.server._postmaster_info
        if info is not None and info.is_running():
            info.process.kill()

    def stop(self) -> None:
        data_dir = Path(self.server.pgdata).parent
        with postgres_may_enter(data_dir):  # pg_ctl stop runs as the wheel's user too
            self.server.cleanup()
        private(data_dir)


def stop_all(children: list[Child]) -> None:
    """Stop the services all at once (each has `STOP_GRACE_SECONDS` to finish its work, together, not one after the
    other), then what they depend on — Prefect, its database, Valkey — last started first."""
    services = [c for c in children if not c.infrastructure]
    for child in services:
        child.ask_to_stop()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in services:
        child.wait_stopped(deadline)
    for child in reversed([c for c in children if c.infrastructure]):
        child.stop()


@dataclass
class _Watch:
    child: Child
    state: str = "running"  # running → waiting (restart due at `restart_at`) → starting → running; or done
    fast_failures: int = 0
    restart_at: float = 0.0
    down_since: float = 0.0


class Supervisor:
    """Restarts whatever of `children` dies; `check()` is called every half second by `crawlcoin up`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.watches: list[_Watch] = []

    def watch(self, child: Child) -> None:
        self.watches.append(_Watch(child))

    def check(self) -> None:
        now = time.monotonic()
        for w in self.watches:
            child = w.child
            if w.state == "done":
                continue
            if w.state == "waiting":
                if now >= w.restart_at:
                    try:
                        child.start()
                    except Exception as e:  # e.g. pg_ctl failed: counts as one more fast failure
                        self._died(w, f"could not start: {type(e).__name__}: {e}", now)
                        continue
                    w.state = "starting"
                continue
            how = child.exited()
            if how is not None and child.one_shot and child.process is not None and child.process.returncode == 0:
                w.state = "done"
                self.console.print(f"{child.name} finished its work (exit code 0); the rest keeps running")
            elif how is not None:
                self._died(w, how, now)
            elif w.state == "starting":
                if child.is_ready():
                    w.state = "running"
                    self.console.print(f"{child.name} is back (down {time.monotonic() - w.down_since:.1f} s)")
                elif now - child.started_at > START_TIMEOUT_SECONDS:
                    child.kill()
                    self._died(w, f"not healthy {START_TIMEOUT_SECONDS:.0f} s after starting", now)
            elif now - child.started_at >= FAST_FAILURE_SECONDS:
                w.fast_failures = 0

    def _died(self, w: _Watch, how: str, now: float) -> None:
        child = w.child
        if now - child.started_at < FAST_FAILURE_SECONDS:
            w.fast_failures += 1
        else:
            w.fast_failures = 0
        if w.fast_failures >= GIVE_UP_AFTER:
            raise CrawlcoinError(
                f"{child.name} died ({how}) {w.fast_failures} times in a row, each time within "
                f"{FAST_FAILURE_SECONDS:.0f} s of starting; giving up. Last lines of {child.log}:\n{child.log_tail()}")
        delay = BACKOFF_SECONDS[min(w.fast_failures, len(BACKOFF_SECONDS) - 1)]
        if w.state == "running":
            w.down_since = now
        w.state, w.restart_at = "waiting", now + delay
        self.console.print(f"{child.name} died ({how}); restarting in {delay} s")
