"""What a miner's live display shows: its state, its counts and coins, its rate and its standing."""

import time
from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class MinerStats:
    """What the live display shows."""

    server: str
    state: str = "starting"
    done: int = 0  # results accepted and paid (the page delivered, or a fee for checking another miner's)
    held: int = 0  # results waiting for another miner's fetch to check them, their pay held
    unpaid: int = 0  # results accepted without pay (refused target, robots.txt, site errors, another fetch won)
    failed: int = 0  # results the server refused, or that could not be delivered
    coins: int = 0
    in_flight: int = 0
    capacity: int = 0
    last_problem: str | None = None
    unpaid_reasons: Counter[str] = field(default_factory=Counter)  # why results earned nothing, by cause
    last_unpaid: str | None = None  # the fetcher's words about the latest unpaid result
    finished_at: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    reputation: float | None = None  # the account's reputation, 0…1, as the server last said
    standing: str | None = None  # new, trusted or suspect

    def reputation_text(self) -> str:
        """`0.92 (trusted: a few results are checked)`."""
        if self.reputation is None:
            return "unknown"
        meaning = {"new": "new: every result is checked until ten checks in a row agree",
                   "trusted": "trusted: a few results are checked at random",
                   "suspect": "suspect: outvoted before, every result is checked"}.get(self.standing or "", "")
        return f"{self.reputation:.2f}" + (f" ({meaning})" if meaning else "")

    def per_minute(self, window: float = 60.0) -> float:
        now = time.monotonic()
        recent = [t for t in self.finished_at if now - t <= window]
        if not recent:
            return 0.0
        return len(recent) * 60.0 / max(min(window, now - recent[0]), 1.0)

    def unpaid_text(self) -> str:
        """`3 (refused target ×3: … loopback address …)`: how many, and why."""
        if not self.unpaid:
            return "0"
        causes = ", ".join(f"{cause} ×{n}" for cause, n in self.unpaid_reasons.most_common())
        last = f": {self.last_unpaid}" if self.last_unpaid else ""
        return f"{self.unpaid} ({causes}{last})"
