"""Retention of delivered bodies on Cassandra: deleting the bodies of the stretches result clients acknowledged.

`record_delivery` (in `results`) writes each acknowledged stretch into `deliveries`, partitioned by
the minute it was delivered in, and lists that minute in `delivery_minutes` (one small partition).
A pruning pass reads the listed minutes up to its cutoff and, in each, the stretches delivered before
the cutoff: it deletes their jobs' bodies (`body` null, `body_pruned_at` set; the `result` column
with hash, size, status and timings stays), then the stretch's row. A minute is unlisted once it is
empty and over for longer than `GRACE_US`, after which no delivery is recorded in it. Every step is
idempotent, so passes may overlap or stop anywhere.
"""

import json
from collections import defaultdict
from datetime import datetime

from core.storage.cassandra.schema import us
from core.storage.cassandra.session import CassandraBase, bucket_of
from core.storage.records import Pruned

MINUTE_US = 60_000_000
GRACE_US = 5 * MINUTE_US


def minute_of(at: datetime) -> int:
    return us(at) // MINUTE_US


class CassandraRetention(CassandraBase):
    _unlisted_below = 0
    """Minutes below this were unlisted by this process: later passes start after their tombstones."""

    def prune_result_bodies(self, delivered_before: datetime, now: datetime, limit: int = 100) -> Pruned:
        cutoff = us(delivered_before)
        handled = bodies = 0
        contiguous = True
        for row in self._rows("SELECT minute FROM delivery_minutes WHERE shard = 0 AND minute >= ? AND minute <= ?",
                              (self._unlisted_below, cutoff // MINUTE_US)):
            minute, wanted = row["minute"], limit - handled
            if wanted <= 0:
                break
            stretches = self._rows("SELECT delivered_at, order_id, first_n, last_n FROM deliveries "
                                   "WHERE minute = ? AND delivered_at < ? LIMIT ?", (minute, cutoff, wanted))
            for s in stretches:
                bodies += self._prune(s["order_id"], s["first_n"], s["last_n"], now)
                self._exec("DELETE FROM deliveries WHERE minute = ? AND delivered_at = ? AND order_id = ? "
                           "AND first_n = ?", (minute, s["delivered_at"], s["order_id"], s["first_n"]))
            handled += len(stretches)
            over = (minute + 1) * MINUTE_US
            if len(stretches) < wanted and over <= cutoff and over + GRACE_US <= us(now):
                self._exec("DELETE FROM delivery_minutes WHERE shard = 0 AND minute = ?", (minute,))
                if contiguous:
                    self._unlisted_below = minute + 1
            else:
                contiguous = False
        return Pruned(deliveries=handled, bodies=bodies)

    def _prune(self, order_id: str, first_n: int, last_n: int, now: datetime) -> int:
        """Delete the bodies of the order's results first_n … last_n that still have one; how many."""
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for job in self._jobs(order_id, list(range(first_n, last_n + 1)), "n, result, body_pruned_at"):
            if job["result"] is not None and job["body_pruned_at"] is None and json.loads(job["result"])["body_size"]:
                by_bucket[bucket_of(job["n"])].append(job["n"])
        self._many("UPDATE jobs SET body = null, body_pruned_at = ? WHERE order_id = ? AND bucket = ? AND n IN ?",
                   [(us(now), order_id, bucket, ns) for bucket, ns in by_bucket.items()])
        return sum(map(len, by_bucket.values()))
