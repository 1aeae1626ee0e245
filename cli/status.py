"""`crawlcoin status`: one screen of the running marketplace, from every service's `/metrics` and the API.

The services come from the metrics targets `crawlcoin up` writes into the data directory (Prometheus's
file_sd format), or from the settings' ports when there is no such file. Lateness quantiles are read
from the histograms as Prometheus's `histogram_quantile` does: over the last minutes with `--watch`
(the difference to the oldest scrape in the window), since each server started otherwise.
"""

import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from core.errors import CrawlcoinError
from core.settings import Settings

METRICS_TARGETS = "metrics-targets.json"
"""Written by `crawlcoin up` into the data directory."""
WINDOW_SECONDS = 300.0
SERVICES = ("api", "worker", "mining", "results")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(sample name, sorted labels) → value, summed over the servers of a service."""


@dataclass
class Target:
    service: str
    address: str  # host:port


@dataclass
class Scrape:
    at: float
    up: dict[str, bool]  # address → answered
    samples: Samples = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)  # the API's /health checks


def write_targets(path: Path, host: str, ports: dict[str, list[int]]) -> Path:
    """Every service's metrics address (service → ports), in Prometheus's file_sd format."""
    groups = [
        {"targets": [f"{host}:{port}" for port in ports[service]], "labels": {"service": service}}
        for service in SERVICES
        if ports.get(service)
    ]
    path.write_text(json.dumps(groups, indent=2) + "\n")
    return path


def targets(settings: Settings) -> list[Target]:
    path = settings.data_dir.expanduser() / METRICS_TARGETS
    if path.exists():
        try:
            groups = json.loads(path.read_text())
            return [Target(g["labels"]["service"], t) for g in groups for t in g["targets"]]
        except (ValueError, KeyError, TypeError) as e:
            raise CrawlcoinError(
                f"{path} is not a list of metrics targets ({e}); delete it or start `crawlcoin up` again"
            ) from None
    host = settings.host
    found = [
        Target("api", f"{host}:{settings.api_port}"),
        Target("mining", f"{host}:{settings.mining_port}"),
        Target("results", f"{host}:{settings.results_port}"),
    ]
    if settings.worker_metrics_port:
        found.append(Target("worker", f"{host}:{settings.worker_metrics_port}"))
    return found


def scrape(client: httpx.Client, found: list[Target]) -> Scrape:
    snap = Scrape(at=time.monotonic(), up={})
    for target in found:
        try:
            response = client.get(f"http://{target.address}/metrics")
            response.raise_for_status()
        except httpx.HTTPError:
            snap.up[target.address] = False
            continue
        snap.up[target.address] = True
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                snap.samples[key] = snap.samples.get(key, 0.0) + sample.value
        if target.service == "api":
            try:
                snap.health = {k: str(v) for k, v in client.get(f"http://{target.address}/health").json().items()}
            except (httpx.HTTPError, ValueError):
                snap.health = {}
    return snap


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name and label in dict(k[1])}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """`histogram_quantile` over cumulative bucket counts (upper bound → count); None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound is the best figure there is
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def histogram(samples: Samples, name: str, since: Samples | None) -> dict[float, float]:
    out: dict[float, float] = {}
    for (sample, labels), v in samples.items():
        if sample == f"{name}_bucket":
            le = dict(labels)["le"]
            bound = math.inf if le == "+Inf" else float(le)
            out[bound] = v - ((since or {}).get((sample, labels), 0.0))
    return out


def _seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def render(found: list[Target], now: Scrape, window: Scrape | None) -> Group:
    services = Table(title="services", title_justify="left", box=box.SIMPLE)
    for col in ("service", "address", "state"):
        services.add_column(col)
    for target in found:
        services.add_row(
            target.service, target.address, "[green]up[/]" if now.up.get(target.address) else "[red]down[/]"
        )
    if now.health:
        services.add_row("store", "", _state(now.health.get("store")))
        services.add_row("valkey", "", _state(now.health.get("valkey")))

    s = now.samples
    over = "since start" if window is None else f"last {max(1, round((now.at - window.at) / 60))} min"
    market = Table(title="marketplace", title_justify="left", show_header=False, box=box.SIMPLE)
    market.add_column("figure")
    market.add_column("value", justify="right")
    rows = [
        ("miners online", f"{value(s, 'crawlcoin_miners_connected'):.0f}"),
        ("result clients online", f"{value(s, 'crawlcoin_result_clients_connected'):.0f}"),
        ("orders with jobs queued", f"{value(s, 'crawlcoin_orders_queued'):.0f}"),
        ("orders late", f"{value(s, 'crawlcoin_orders_late'):.0f}"),
        ("jobs queued", f"{value(s, 'crawlcoin_queue_jobs'):.0f}"),
        ("backlog (due, not released)", f"{value(s, 'crawlcoin_queue_due_jobs'):.0f}"),
        ("oldest due job waiting", _seconds(value(s, "crawlcoin_queue_oldest_due_seconds"))),
        ("leases outstanding", f"{value(s, 'crawlcoin_leases_outstanding'):.0f}"),
        ("order changes not yet in Prefect", f"{value(s, 'crawlcoin_sync_requests_pending'):.0f}"),
    ]
    base = window.samples if window is not None else None
    for label, metric in (
        ("due → released", "crawlcoin_release_lateness_seconds"),
        ("due → stored", "crawlcoin_store_lateness_seconds"),
    ):
        buckets = histogram(s, metric, base)
        rows.append(
            (
                f"lateness {label} p50 / p99 ({over})",
                f"{_seconds(quantile(0.5, buckets))} / {_seconds(quantile(0.99, buckets))}",
            )
        )
    outcomes = by_label(s, "crawlcoin_jobs_finished_total", "outcome")
    rows.append(("jobs finished", ", ".join(f"{k} {v:.0f}" for k, v in sorted(outcomes.items())) or "0"))
    checks = by_label(s, "crawlcoin_checks_decided_total", "validation")
    outvoted = value(s, "crawlcoin_results_outvoted_total")
    rows.append(("checks decided", (", ".join(f"{k} {v:.0f}" for k, v in sorted(checks.items())) or "0")
                 + (f"; {outvoted:.0f} outvoted" if outvoted else "")))
    rows.append(("results delivered", f"{value(s, 'crawlcoin_results_delivered_total'):.0f}"))
    rows.append(("coins paid", f"{value(s, 'crawlcoin_coins_paid_total'):.0f}"))
    errors = by_label(s, "crawlcoin_backend_errors_total", "backend")
    rows.append(("dependency errors", ", ".join(f"{k} {v:.0f}" for k, v in sorted(errors.items()) if v) or "none"))
    for row in rows:
        market.add_row(*row)
    return Group(services, market)


def _state(check: str | None) -> str:
    if check == "ok":
        return "[green]up[/]"
    return f"[red]{check or 'unknown'}[/]"


def run_status(settings: Settings, watch: bool, interval: float, console: Console) -> int:
    found = targets(settings)
    history: deque[Scrape] = deque()
    with httpx.Client(timeout=3) as client:
        now = scrape(client, found)
        if not watch:
            console.print(render(found, now, None))
            return 0 if all(now.up.values()) else 1
        history.append(now)
        with Live(render(found, now, None), console=console, auto_refresh=False, vertical_overflow="visible") as live:
            try:
                while True:
                    time.sleep(interval)
                    now = scrape(client, found)
                    while len(history) > 1 and now.at - history[1].at >= WINDOW_SECONDS:
                        history.popleft()
                    # A window shorter than a minute says little: until then, figures since start.
                    window = history[0] if now.at - history[0].at >= 60 else None
                    live.update(render(found, now, window), refresh=True)
                    history.append(now)
            except KeyboardInterrupt:
                return 0
