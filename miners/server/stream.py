"""The mining servers' side of Valkey: the job stream's consumer group, the per-domain request
budget every server shares, and the result-notice stream result servers read.

Each mining server is one consumer (its server id) of the group `mining` on the job stream.
An entry stays in the server's pending list from XREADGROUP until its result is stored and it
is acknowledged; while the server holds it (waiting for a miner, or leased to one) the server
re-claims it to itself every few seconds, which resets its idle time. So only entries of a
server that stopped doing that — a dead one — ever grow idle beyond the lease, and any server
then takes them over with XAUTOCLAIM.
"""

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from core.protocol import KEY_PREFIX, jobs
from core.protocol.jobs import JOBS_STREAM, Job
from core.protocol.notices import NOTICES_MAXLEN, NOTICES_STREAM, ResultNotice

GROUP = "mining"
_BUDGET = f"{KEY_PREFIX}:budget:"

# KEYS: a budget key per request (a domain's key once per request to it); ARGV: microseconds between two
# requests to one domain, and the slack in microseconds. A domain's key holds the time its next request is
# due (the generic cell rate algorithm): a request may go when that time is at most the slack away, and
# moves it one interval on. So a domain gets its rate exactly over time, a request goes at most the slack
# before its turn, and one call books as many requests to a fast domain as fall within the slack (one per
# call, as before, would cap a server at one job per hand-out pass for a domain, however high its rate).
# Returns, per key in turn, 0 when the request may go now (and books it), else microseconds to wait.
_TAKE_BUDGET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local slack = tonumber(ARGV[2])
local waits = {}
for i, key in ipairs(KEYS) do
  local due = tonumber(redis.call('GET', key) or '0')
  if due <= now + slack then
    local next_due = math.max(due, now) + interval
    redis.call('SET', key, string.format('%.0f', next_due), 'PX', math.floor((next_due - now) / 1000) + 1000)
    waits[i] = 0
  else
    waits[i] = due - now - slack
  end
end
return waits
"""
BUDGET_SLACK_US = 50_000
"""How early a request to a domain may go before its exact turn: below every interval a polite rate gives
(1 s at the default of 1 per second), so such a domain still gets one request at a time; a domain allowed
1,000 requests a second gets up to 50 in one hand-out pass."""

@dataclass(slots=True)
class Entry:
    """One job stream entry this server holds."""

    id: str
    job: Job | None  # None: the entry is unreadable (or was deleted) and is only to be acknowledged


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, fields: dict | None) -> Entry:
    return Entry(_decode(entry_id), jobs.decode(fields))


class JobStream:
    """Consumer `consumer` of the mining group on the job stream."""

    def __init__(self, redis: Redis, consumer: str, domain_rate: float) -> None:
        self.redis = redis
        self.consumer = consumer
        self._interval_us = max(1, round(1_000_000 / domain_rate))
        self._take_budget = redis.register_script(_TAKE_BUDGET)

    async def ensure_group(self) -> None:
        try:
            # From the start of the stream: jobs released before any mining server ran are not lost.
            await self.redis.xgroup_create(JOBS_STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` new entries, waiting at most `block_ms` for the first."""
        try:
            reply = await self.redis.xreadgroup(GROUP, self.consumer, {JOBS_STREAM: ">"}, count=count,
                                                block=block_ms)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            await self.ensure_group()  # the stream was deleted (e.g. FLUSHDB): start again
            return []
        return [_entry(i, f) for _, entries in reply or [] for i, f in entries]

    async def reclaim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle for at least `min_idle_ms` (their server is gone)."""
        taken: list[Entry] = []
        start = "0-0"
        while len(taken) < count:
            try:
                reply = await self.redis.xautoclaim(JOBS_STREAM, GROUP, self.consumer, min_idle_ms, start,
                                                    count=count - len(taken))
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                await self.ensure_group()
                return taken
            start, entries = _decode(reply[0]), reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            taken += [_entry(i, f) for i, f in entries if i is not None]
            taken += [Entry(_decode(i), None) for i in deleted]
            if start == "0-0":
                break
        return taken

    async def keep(self, entry_ids: list[str]) -> None:
        """Reset the idle time of entries this server still holds, so no other server takes them."""
        for i in range(0, len(entry_ids), 500):
            await self.redis.xclaim(JOBS_STREAM, GROUP, self.consumer, 0, entry_ids[i:i + 500], justid=True)

    async def finish(self, entry_ids: list[str], notices: list[ResultNotice]) -> None:
        """Acknowledge (and drop) finished entries and tell result servers, in one round trip."""
        if not entry_ids and not notices:
            return
        pipe = self.redis.pipeline(transaction=False)
        for notice in notices:
            pipe.xadd(NOTICES_STREAM, notice.encode(), maxlen=NOTICES_MAXLEN, approximate=True)
        if entry_ids:
            pipe.xack(JOBS_STREAM, GROUP, *entry_ids)
            pipe.xdel(JOBS_STREAM, *entry_ids)
        await pipe.execute()

    async def requeue(self, entry: Entry) -> None:
        """Put a job no miner here accepts back on the stream for any server, atomically."""
        assert entry.job is not None
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(JOBS_STREAM, jobs.encode(entry.job))
        pipe.xack(JOBS_STREAM, GROUP, entry.id)
        pipe.xdel(JOBS_STREAM, entry.id)
        await pipe.execute()

    async def take_budget(self, domains: list[str]) -> list[float]:
        """For each domain in turn: 0 if a request may go now (booked), else seconds to wait. One script call
        (EVALSHA) for them all: a pipeline of scripts costs a `SCRIPT EXISTS` round trip on every execution."""
        if not domains:
            return []
        waits = await self._take_budget(keys=[_BUDGET + d for d in domains], args=[self._interval_us, BUDGET_SLACK_US])
        return [int(w) / 1_000_000 for w in waits]

    async def forget_idle_consumers(self, idle_ms: int) -> None:
        """Drop consumers of stopped servers once they hold nothing (keeps XINFO readable)."""
        try:
            consumers = await self.redis.xinfo_consumers(JOBS_STREAM, GROUP)
        except ResponseError:
            return
        for c in consumers:
            name = _decode(c["name"])
            if name != self.consumer and int(c["pending"]) == 0 and int(c.get("inactive", c["idle"])) > idle_ms:
                await self.redis.xgroup_delconsumer(JOBS_STREAM, GROUP, name)
