"""One log line per outage of a dependency (Valkey, the store, Prefect), not one traceback per retry.

Loops that retry against a dependency call `outage("Valkey").failed(e)` on an error and
`.ok()` after a success: the first failure logs one warning naming the dependency and the error,
retries while it stays down log at debug level only, and the first success after it logs one
info line with how long the outage lasted. The record is per process and per dependency, so
several loops of one service hitting the same outage still log it once.
"""

import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.metrics import BACKEND_ERRORS, backend_label

log = logging.getLogger("crawlcoin.outage")


class Outage:
    def __init__(self, dependency: str) -> None:
        self.dependency = dependency
        self.since: float | None = None
        self.retries = 0
        self.errors = BACKEND_ERRORS.labels(backend=backend_label(dependency))

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, error: BaseException, doing: str = "") -> None:
        """A call to the dependency failed; `doing` says what for (shown on the first line only)."""
        what = f" ({doing})" if doing else ""
        self.errors.inc()
        if self.since is None:
            self.since, self.retries = time.monotonic(), 0
            log.warning("%s unavailable%s: %s: %s; retrying quietly until it is back", self.dependency, what,
                        type(error).__name__, error)
        else:
            self.retries += 1
            log.debug("%s still unavailable%s: %s: %s", self.dependency, what, type(error).__name__, error)

    def ok(self) -> None:
        """A call to the dependency succeeded: ends the outage, if there was one."""
        if self.since is not None:
            log.info("%s is back after %.1f s (%d retries)", self.dependency, time.monotonic() - self.since,
                     self.retries)
            self.since = None


_outages: dict[str, Outage] = {}


def outage(dependency: str) -> Outage:
    """The outage record of `dependency` in this process."""
    return _outages.setdefault(dependency, Outage(dependency))


# What a client of Valkey raises while the server is down, restarting or loading its AOF
# (redis-py's AuthenticationError and BusyLoadingError are ConnectionErrors too).
VALKEY_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ConnectionError,
                                                 TimeoutError)
