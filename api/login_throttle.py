"""Throttling through Valkey: failed logins per account and per client address, registrations per client address.

Client addresses are the real ones (`api.client_address`): the dashboard and other trusted proxies pass on
their users' addresses, so one user's failures do not lock out everyone behind the same proxy.
"""

from redis import Redis

from core.client_address import throttle_key
from core.errors import Throttled
from core.settings import Settings


class LoginThrottle:
    """Counts failures in a fixed window; past the limit every attempt gets 429 until it ends."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._window = settings.login_window_seconds
        self._limits = (
            ("account", settings.login_max_failures_per_account),
            ("client", settings.login_max_failures_per_client),
        )

    def _keys(self, username: str, client: str) -> list[tuple[str, int, str]]:
        names = {"account": username.lower(), "client": throttle_key(client)}
        return [(f"throttle:login:{kind}:{names[kind]}", limit, kind) for kind, limit in self._limits]

    def check(self, username: str, client: str) -> None:
        keys = self._keys(username, client)
        pipe = self._redis.pipeline(transaction=False)
        for key, _, _ in keys:
            pipe.get(key)
            pipe.ttl(key)
        replies = pipe.execute()
        for i, (_, limit, kind) in enumerate(keys):
            count, ttl = int(replies[2 * i] or 0), replies[2 * i + 1]
            if count >= limit:
                who = "this account" if kind == "account" else "your address"
                wait = ttl if ttl and ttl > 0 else self._window
                raise Throttled(f"too many failed logins for {who}; try again in {wait} seconds", retry_after=wait)

    def record_failure(self, username: str, client: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for key, _, _ in self._keys(username, client):
            pipe.incr(key)
            pipe.expire(key, self._window, nx=True)
        pipe.execute()

    def reset_account(self, username: str) -> None:
        self._redis.delete(self._keys(username, "")[0][0])


class RegistrationThrottle:
    """Counts every registration attempt per client address in a fixed window; past the limit, 429."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._window = settings.register_window_seconds
        self._limit = settings.register_max_per_client

    def attempt(self, client: str) -> None:
        key = f"throttle:register:client:{throttle_key(client)}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.ttl(key)
        pipe.expire(key, self._window, nx=True)
        count, ttl, _ = pipe.execute()
        if count > self._limit:
            wait = ttl if ttl and ttl > 0 else self._window
            raise Throttled(f"too many new accounts from your address; try again in {wait} seconds",
                            retry_after=wait)
