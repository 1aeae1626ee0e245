"""The job queue in Valkey: a due-time-ordered set that releases jobs onto the job stream.

A dispatch run claims repetitions ahead of time and *enqueues* them here; a releaser loop
moves each one onto the job stream (`core.protocol.jobs`) at its due time, so delivery precision
does not depend on when Prefect ran the dispatch. Every step is one Lua script, hence atomic:

- enqueue: add a job unless it is queued already or was ever released (marker kept 7 days),
  so enqueueing the same repetition twice puts it on the stream once;
- release: due jobs leave the set and enter the stream in one step, never both or neither;
- withdraw: take an order's not-yet-released jobs out (pause/cancel) and say which.
"""

import asyncio
import time
from collections.abc import Iterable

from redis.asyncio import Redis

from core.metrics import observe_released
from core.outage import VALKEY_DOWN, outage
from core.protocol import KEY_PREFIX
from core.protocol.jobs import JOB_FIELD, JOBS_STREAM, KEY_FIELD, Job
from core.protocol.notices import NOTICES_MAXLEN, NOTICES_STREAM, ResultNotice

DUE = f"{KEY_PREFIX}:due"
PAYLOADS = f"{KEY_PREFIX}:due:payload"
SYNC_WAKEUP = f"{KEY_PREFIX}:sync-wakeup"
"""Pub/sub channel: an order change and its sync request are stored; every worker's sync loop
wakes up and applies pending changes to Prefect now instead of at its next interval."""
RELEASED_TTL_SECONDS = 7 * 24 * 3600


def _order_set(order_id: str) -> str:
    return f"{KEY_PREFIX}:due:order:{order_id}"


def _released_marker(key: str) -> str:
    return f"{KEY_PREFIX}:released:{key}"


# KEYS: due zset, payload hash, order set, released marker; ARGV: job key, score, payload
_ENQUEUE = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
if added == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[1])
end
return added
"""

# KEYS: due zset, payload hash, stream; ARGV: now, limit, marker ttl, prefix, the entry's key and job field names.
# Returns the due times of the jobs it released (for the lateness histogram).
_RELEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local scores = {}
for i = 1, #due, 2 do
  local key = due[i]
  table.insert(scores, due[i + 1])
  local payload = redis.call('HGET', KEYS[2], key)
  if payload then
    redis.call('XADD', KEYS[3], '*', ARGV[5], key, ARGV[6], payload)
  end
  redis.call('ZREM', KEYS[1], key)
  redis.call('HDEL', KEYS[2], key)
  local order_id = string.match(key, '^(.*):%d+$')
  redis.call('SREM', ARGV[4] .. ':due:order:' .. order_id, key)
  redis.call('SET', ARGV[4] .. ':released:' .. key, '1', 'EX', tonumber(ARGV[3]))
end
return scores
"""

# KEYS: due zset, payload hash, order set
_WITHDRAW = """
local members = redis.call('SMEMBERS', KEYS[3])
local taken = {}
for _, key in ipairs(members) do
  if redis.call('ZREM', KEYS[1], key) == 1 then
    redis.call('HDEL', KEYS[2], key)
    table.insert(taken, key)
  end
end
redis.call('DEL', KEYS[3])
return taken
"""


class JobQueue:
    """Due-time queue and job stream. Safe to use from any number of processes at once."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enqueue = redis.register_script(_ENQUEUE)
        self._release = redis.register_script(_RELEASE)
        self._withdraw = redis.register_script(_WITHDRAW)

    async def enqueue(self, jobs: Iterable[Job]) -> int:
        """Queue jobs for release at their due time; returns how many were new."""
        pipe = self.redis.pipeline(transaction=False)
        count = 0
        for job in jobs:
            keys = [DUE, PAYLOADS, _order_set(job.order_id), _released_marker(job.key)]
            await self._enqueue(keys=keys, args=[job.key, job.due_at.timestamp(), job.model_dump_json()], client=pipe)
            count += 1
        if not count:
            return 0
        return sum(int(x) for x in await pipe.execute())

    async def release_due(self, now: float | None = None, limit: int = 500) -> int:
        """Move jobs due by `now` onto the job stream; returns how many moved."""
        now = time.time() if now is None else now
        args = [now, limit, RELEASED_TTL_SECONDS, KEY_PREFIX, KEY_FIELD, JOB_FIELD]
        scores = await self._release(keys=[DUE, PAYLOADS, JOBS_STREAM], args=args)
        observe_released([float(x) for x in scores], now)
        return len(scores)

    async def withdraw(self, order_id: str) -> list[int]:
        """Take the order's not-yet-released jobs out of the queue; returns their repetition numbers."""
        taken = await self._withdraw(keys=[DUE, PAYLOADS, _order_set(order_id)])
        return sorted(int(k.decode().rsplit(":", 1)[1] if isinstance(k, bytes) else k.rsplit(":", 1)[1])
                      for k in taken)

    async def announce(self, order_id: str, outcome: str) -> None:
        """Tell result servers that repetitions of the order became final without a result (refunded) or
        that the order ended, so its deliveries move on now instead of at their next safety poll."""
        notice = ResultNotice(order_id=order_id, outcome=outcome)
        await self.redis.xadd(NOTICES_STREAM, notice.encode(), maxlen=NOTICES_MAXLEN, approximate=True)

    async def next_due_in(self, now: float | None = None) -> float | None:
        """Seconds until the earliest queued job is due (≤ 0: overdue), or None if none is queued."""
        head = await self.redis.zrange(DUE, 0, 0, withscores=True)
        if not head:
            return None
        return head[0][1] - (time.time() if now is None else now)

    async def queued_for(self, order_id: str) -> tuple[int, float | None]:
        """How many of the order's jobs wait in the queue, and when the last of them is due."""
        keys = await self.redis.smembers(_order_set(order_id))
        if not keys:
            return 0, None
        scores = [s for s in await self.redis.zmscore(DUE, list(keys)) if s is not None]
        return len(scores), max(scores) if scores else None

    async def held(self, keys: list[str]) -> list[bool]:
        """Whether Valkey holds each job: waiting in the queue, or released (its marker outlives the stream entry).

        Release is one script, so a job is always in one of the two; a job in neither was never
        queued or was lost (Valkey forgets its last second of writes when it crashes).
        """
        if not keys:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.zmscore(DUE, keys)
        for key in keys:
            pipe.exists(_released_marker(key))
        scores, *markers = await pipe.execute()
        return [score is not None or bool(marker) for score, marker in zip(scores, markers, strict=True)]

    async def queued_count(self) -> int:
        return int(await self.redis.zcard(DUE))


async def wake_sync(redis: Redis) -> None:
    """Wake the workers' sync loops (the change's sync request must already be in the store)."""
    await redis.publish(SYNC_WAKEUP, b"1")


async def run_releaser(queue: JobQueue, stop: asyncio.Event, max_sleep: float = 0.25,
                       retry_seconds: float = 1.0) -> None:
    """Release due jobs until `stop` is set, waking up right when the next job is due.

    While Valkey is unreachable it tries again every `retry_seconds` (it never gives up).
    """
    while not stop.is_set():
        try:
            moved = await queue.release_due()
            wait = None if moved else await queue.next_due_in()
        except VALKEY_DOWN as e:  # Valkey restarting: the due jobs wait for it, the releaser too
            outage("Valkey").failed(e, "releasing due jobs")
            delay = retry_seconds
        else:
            outage("Valkey").ok()
            if moved:
                continue
            delay = max_sleep if wait is None else min(max(wait, 0.0), max_sleep)
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
        except TimeoutError:
            pass
