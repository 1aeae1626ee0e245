"""How well an order's results arrive: the last result's status and the delivery latency
(scheduled time → result stored) over its newest results."""

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

from core.schemas import OrderOut, ResultOut
from dashboard import format as fmt
from dashboard import ui

RECENT = 100  # the newest results the figures are computed from


def delivery_seconds(result: ResultOut) -> float | None:
    """How long after its scheduled time a repetition's result was stored."""
    if result.due_at is None:
        return None
    return (result.stored_at - result.due_at).total_seconds()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Delivery:
    """Figures over the newest results of one order (newest first in `results`)."""

    results: list[ResultOut]

    @property
    def last(self) -> ResultOut | None:
        return self.results[0] if self.results else None

    @property
    def latencies(self) -> list[float]:
        return [s for s in map(delivery_seconds, self.results) if s is not None]

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies, 50) if self.latencies else None

    @property
    def p95(self) -> float | None:
        return percentile(self.latencies, 95) if self.latencies else None

    @property
    def failed(self) -> int:
        return sum(not fmt.result_ok(r) for r in self.results)

    def failure_causes(self) -> str:
        """`10 × Refused by the miner (url host is not allowed: 127.0.0.1 is a loopback address)`: the
        commonest causes among the failed results, with the latest words of the miner about the first."""
        failed = [r for r in self.results if not fmt.result_ok(r)]
        if not failed:
            return ""
        counts = Counter(fmt.result_status(r) for r in failed)
        parts = []
        for cause, n in counts.most_common(2):
            text = next((r.error_text for r in failed if fmt.result_status(r) == cause and r.error_text), None)
            parts.append(f"{n:,} × {cause}" + (f" ({text[:160]})" if text else ""))
        return "; ".join(parts)


def metrics(order: OrderOut, delivery: Delivery) -> None:
    """One row: last result, delivery latency p50 and p95, and how many of the newest results failed."""
    last_col, p50_col, p95_col, failed_col = st.columns(4)
    last = delivery.last
    if last is None:
        last_col.metric("Last result", "—", help="No result has arrived for this order yet.")
        last_col.caption("No results yet" if order.status.value in ("active", "paused") else "No results")
        for col, label in ((p50_col, "Delivery latency p50"), (p95_col, "Delivery latency p95")):
            col.metric(label, "—", help="Scheduled time → result stored; shown once results arrive.")
        failed_col.metric("Failed", "—")
        return
    tz = ui.viewer_timezone()
    last_col.metric("Last result", fmt.result_status(last), help=last.error_text or last.final_url)
    last_col.caption(f"#{last.n:,} · fetched {fmt.when(last.fetched_at, tz)}")
    count = len(delivery.latencies)
    over = f"over the newest {count:,} result{'s' if count != 1 else ''}"
    help_text = f"From the repetition's scheduled time until its result was stored, {over}."
    p50_col.metric("Delivery latency p50", fmt.latency(delivery.p50), help=help_text)
    p50_col.caption(f"median, {over}")
    p95_col.metric("Delivery latency p95", fmt.latency(delivery.p95), help=help_text)
    p95_col.caption("95 % arrived within this")
    failed_col.metric("Failed", f"{delivery.failed:,} of {len(delivery.results):,}",
                      help="Results with a fetch error or an HTTP status of 400 or more, among the newest.")
    if delivery.failed:
        failed_col.caption(delivery.failure_causes())
