"""Checking a result against other miners' fetches of the same repetition: the votes and what they decide.

A result picked for a check waits while another miner (another account, another network where it
can be told) fetches the same repetition. Two fetches that agree (`core.agreement`) validate it; two
that do not call a third fetch, and the fetch that two of the three agree on wins. What is
delivered, who is paid and whose reputation moves follows from the votes alone:

| votes | delivered | paid | reputation |
|---|---|---|---|
| one, no check in the window | it, `unchecked` | its miner | — |
| two that agree | the first, `validated` | its miner; the checker a fee | both agreed |
| two that do not, no third in the window | the most reputable, `disputed` | its miner; the other a fee | — |
| three, two agree, the third clearly not | the pair's first, `validated` | its miner; the other a fee | third struck |
| three, two agree, the third not clearly different | the same | the same | majority agreed |
| three, the third agrees with both | the first, `validated` | its miner; the others a fee | first and third agreed |
| three, no two agree | the most reputable, `disputed` | its miner; the others a fee | — |

("its miner" is paid the order's price from the escrow; a fee is the same amount from the platform.)

A fetch outside the majority gets nothing for that repetition: the price goes to the miner whose
page is delivered, so a false page forfeits the pay it would have earned. Only a fetch that clearly
differs (below the disagreement threshold) from both agreeing fetches counts against its miner;
nobody's reputation moves when the votes do not say who is wrong.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from core.agreement import Comparer
from core.schemas import Validation
from core.storage.records import Result

MAX_VOTES = 3


@dataclass(slots=True)
class Vote:
    """One miner's fetch of the repetition."""

    result: Result
    network: str | None = None  # the miner's network when it can be told (`core.client_address.network_of`)

    @property
    def miner_id(self) -> str:
        return self.result.miner_id


@dataclass(slots=True)
class Verdict:
    """What the votes so far decide. `delivered` None: another fetch is needed first."""

    delivered: Result | None = None
    agreed: list[str] = field(default_factory=list)  # miners whose fetch agreed with the delivered one
    outvoted: list[str] = field(default_factory=list)  # miners outvoted by two agreeing fetches

    @property
    def final(self) -> bool:
        return self.delivered is not None


def _deliver(vote: Vote, validation: Validation, checkers: list[Vote]) -> Result:
    return vote.result.model_copy(update={"validation": validation,
                                          "checked_by": [v.miner_id for v in checkers]})


def _disputed(votes: list[Vote], standing: Callable[[str], float] | None) -> Verdict:
    """No two fetches agree: deliver the most reputable miner's, pay the others a fee, judge nobody."""
    best = max(votes, key=lambda v: standing(v.miner_id)) if standing is not None else votes[0]
    return Verdict(_deliver(best, Validation.disputed, [v for v in votes if v is not best]))


def tally(votes: list[Vote], comparer: Comparer, closing: bool,
          standing: Callable[[str], float] | None = None) -> Verdict:
    """What `votes` (in the order they came, from different miners) decide. With `closing` (the window is over,
    or no further miner can be had) they decide now, whatever they are; otherwise a single vote, or two that
    do not agree, ask for another fetch. A disputed repetition gets the fetch of the miner with the highest
    `standing` (its reputation), the first one's between equals."""
    if not votes:
        return Verdict()
    if len(votes) == 1:
        return Verdict(_deliver(votes[0], Validation.unchecked, [])) if closing else Verdict()
    a, b = votes[0], votes[1]
    if comparer.agree(a.result, b.result):
        return Verdict(_deliver(a, Validation.validated, [b]), agreed=[a.miner_id, b.miner_id])
    if len(votes) == 2:
        return _disputed(votes, standing) if closing else Verdict()
    c = votes[2]
    with_a, with_b = comparer.agree(a.result, c.result), comparer.agree(b.result, c.result)
    if with_a and with_b:  # the third sits between the two: it confirms the first, and nobody is shown wrong
        return Verdict(_deliver(a, Validation.validated, [b, c]), agreed=[a.miner_id, c.miner_id])
    if not (with_a or with_b):
        return _disputed(votes, standing)
    winner, loser = (a, b) if with_a else (b, a)
    clearly = comparer.differ(loser.result, winner.result) and comparer.differ(loser.result, c.result)
    return Verdict(_deliver(winner, Validation.validated, [c]), agreed=[winner.miner_id, c.miner_id],
                   outvoted=[loser.miner_id] if clearly else [])
