"""Every Valkey client of crawlcoin is made here, from one URL: a single server or a Sentinel-watched primary.

- `redis://[:password@]host:port/db` (or `rediss://`, `unix://`): that server.
- `redis+sentinel://[:password@]host1:port1,host2:port2,host3:port3/primary-name[/db]`: ask the Sentinels
  which server is the primary of `primary-name` and talk to it. A new connection asks again, and a
  connection to a server that died or was demoted fails with a `ConnectionError`, which the loops
  already retry (`core.outage.VALKEY_DOWN`): after a failover every process finds the new primary by
  itself. The password authenticates to the primary and to the Sentinels alike (set the same
  `requirepass` on both: a Sentinel without one lets anyone on the network force a failover).
"""

from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.sentinel import Sentinel as SyncSentinel

from core.settings import SentinelTarget, is_sentinel_url, parse_sentinel_url


class _SentinelRedis(Redis):
    """The primary's client; closing it also closes its connections to the Sentinels."""

    sentinel: Sentinel

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.sentinel.aclose()


class _SyncSentinelRedis(SyncRedis):
    sentinel: SyncSentinel

    def close(self) -> None:
        super().close()
        for client in self.sentinel.sentinels:
            client.close()


def _sentinel_kwargs(target: SentinelTarget, kwargs: dict[str, Any]) -> dict[str, Any]:
    auth = {"username": target.username, "password": target.password}
    return {
        k: v
        for k, v in {
            **auth,
            "socket_timeout": kwargs.get("socket_timeout", 2),
            "socket_connect_timeout": kwargs.get("socket_connect_timeout", 2),
        }.items()
        if v is not None
    }


def valkey(url: str, **kwargs: Any) -> Redis:
    """An asyncio client for the Valkey at `url` (either form above); `kwargs` go to every connection."""
    if not is_sentinel_url(url):
        return Redis.from_url(url, **kwargs)
    target = parse_sentinel_url(url)
    sentinel = Sentinel(target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, kwargs))
    client = sentinel.master_for(
        target.primary,
        redis_class=_SentinelRedis,
        db=target.db,
        username=target.username,
        password=target.password,
        **kwargs,
    )
    client.sentinel = sentinel
    return client


def valkey_sync(url: str, **kwargs: Any) -> SyncRedis:
    """A blocking client for the Valkey at `url` (either form above), for code that is not async."""
    if not is_sentinel_url(url):
        return SyncRedis.from_url(url, **kwargs)
    target = parse_sentinel_url(url)
    sentinel = SyncSentinel(target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, kwargs))
    client = sentinel.master_for(
        target.primary,
        redis_class=_SyncSentinelRedis,
        db=target.db,
        username=target.username,
        password=target.password,
        **kwargs,
    )
    client.sentinel = sentinel
    return client
