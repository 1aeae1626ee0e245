"""What checking volunteers' results costs and catches, with the rules the mining servers use.

    python bench/validation.py [--pages 40] [--variants 30] [--runs 1000] [--jobs 10000] [--seed 1]

Pages are tests/pages.py's news articles, which change a little on every fetch (time, reader count,
ad, teasers, trending list, comment count, tokens). Every fetch a simulated miner returns is a real
page, compared by `core.agreement`; what is checked, what the votes decide and how reputations move
are `core.trust` and `core.validation`, with the default settings. Only the hand-out is simplified:
each job goes to a random miner that is not barred, and a check to a random other miner, a trusted
one when there is one (as `Handout` prefers). It prints:

1. the similarity of two honest fetches of one page against that of an honest and an altered fetch,
   by the share of the article's paragraphs altered (what the two thresholds sit between);
2. extra fetches as a share of all fetches at steady state, every miner trusted (goal ≤ 10 %);
3. jobs until a cheater that alters 20 % of its pages is barred, p50/p99 over `--runs` seeded runs,
   and how many were barred within 50 of their jobs (goal: ≥ 99 %) — for a cheater that starts as a
   new account, and for one that first earns trust honestly and then cheats;
4. honest miners wrongly outvoted or barred over `--jobs` jobs from a start where all are new (goal 0).

Only the jobs a cheater fetches itself are simulated in (3): the checks it would be asked to make of
other miners' results, where its alterations are caught too, are left out, so the figures are an
upper bound on how long it lasts.
"""

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.agreement import Comparer, Fingerprint, fingerprint, similarity  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage.records import Result  # noqa: E402
from core.trust import Reputation, Standing  # noqa: E402
from core.validation import MAX_VOTES, Vote, tally  # noqa: E402
from tests.pages import FAKE_PAGE, altered, article  # noqa: E402

ALTER_SHARES = (0.1, 0.2, 0.3, 0.5, 1.0)


def page_result(html: str, page: int) -> Result:
    now = datetime.now(UTC)
    return Result.with_body(html.encode(), 2 << 20, job_key=f"o:{page}", order_id="o", n=page, miner_id="",
                            fetched_at=now, status=200, final_url=f"https://news.example/article/{page}",
                            headers={"content-type": "text/html; charset=utf-8"}, stored_at=now)


class Pool:
    """Pre-fetched pages: honest and altered variants of each article, fingerprinted once."""

    def __init__(self, pages: int, variants: int, alter_share: float, seed: int) -> None:
        rng = random.Random(seed)
        self.honest = [[page_result(article(p, rng), p) for _ in range(variants)] for p in range(pages)]
        self.altered = [[page_result(altered(p, rng, alter_share), p) for _ in range(variants)] for p in range(pages)]
        self.prints: dict[str, Fingerprint] = {}
        for r in [r for group in self.honest + self.altered for r in group]:
            self.prints[r.sha256] = fingerprint(r)


class PooledComparer(Comparer):
    """`Comparer`, with the pool's fingerprints instead of fingerprinting each fetch again."""

    def __init__(self, settings: Settings, pool: Pool) -> None:
        super().__init__(settings.agreement_threshold, settings.disagreement_threshold)
        self.pool = pool

    def similarity(self, a: Result, b: Result) -> float:
        return similarity(self.pool.prints[a.sha256], self.pool.prints[b.sha256])


@dataclass
class Miner:
    name: str
    cheat_rate: float = 0.0
    rep: Reputation = field(default_factory=Reputation)
    jobs: int = 0


@dataclass
class World:
    settings: Settings
    pool: Pool
    comparer: PooledComparer
    rng: random.Random
    fetches: int = 0
    extra: int = 0
    wrongly_outvoted: int = 0

    def fetch(self, miner: Miner, page: int) -> Vote:
        self.fetches += 1
        group = self.pool.altered if self.rng.random() < miner.cheat_rate else self.pool.honest
        result = self.rng.choice(group[page]).model_copy(update={"miner_id": miner.name})
        return Vote(result)

    def checker(self, miners: list[Miner], votes: list[Vote]) -> Miner | None:
        taken = {v.miner_id for v in votes}
        others = [m for m in miners if m.name not in taken and m.rep.barred_at is None]
        trusted = [m for m in others if m.rep.standing(self.settings) is Standing.trusted]
        return self.rng.choice(trusted or others) if others else None

    def job(self, miner: Miner, miners: list[Miner]) -> None:
        """One job fetched by `miner`, checked as its standing says, reputations moved as the votes decide."""
        page = self.rng.randrange(len(self.pool.honest))
        miner.jobs += 1
        votes = [self.fetch(miner, page)]
        if self.rng.random() >= miner.rep.check_share(self.settings):
            return
        by_name = {m.name: m for m in miners}
        while True:
            other = self.checker(miners, votes)
            closing = other is None
            if other is not None:
                votes.append(self.fetch(other, page))
                self.extra += 1
                closing = len(votes) >= MAX_VOTES
            verdict = tally(votes, self.comparer, closing, lambda m: by_name[m].rep.score)
            if verdict.final:
                break
        for name in verdict.agreed:
            by_name[name].rep = by_name[name].rep.after(True, self.settings)
        for name in verdict.outvoted:
            by_name[name].rep = by_name[name].rep.after(False, self.settings)
            if by_name[name].cheat_rate == 0:
                self.wrongly_outvoted += 1


def warm(world: World, miners: list[Miner]) -> None:
    """Jobs until every honest miner is trusted."""
    while not all(m.rep.standing(world.settings) is Standing.trusted for m in miners):
        world.job(world.rng.choice(miners), miners)


def similarities(settings: Settings, pool: Pool) -> None:
    honest, fake = [], []
    by_share: dict[float, list[float]] = {s: [] for s in ALTER_SHARES}
    rng = random.Random(7)
    fake_print = fingerprint(page_result(FAKE_PAGE, 0))
    for page, group in enumerate(pool.honest):
        prints = [pool.prints[r.sha256] for r in group]
        honest += [similarity(a, b) for i, a in enumerate(prints) for b in prints[i + 1:]]
        fake.append(similarity(prints[0], fake_print))
        for share in ALTER_SHARES:
            for a in prints[:5]:
                by_share[share].append(similarity(a, fingerprint(page_result(altered(page, rng, share), page))))
    honest.sort()
    print(f"1. similarity (Jaccard of visible-text word 3-shingles), {len(pool.honest)} pages:")
    print(f"   honest pairs ({len(honest)}): min {honest[0]:.3f}, p0.1 {honest[len(honest) // 1000]:.3f}, "
          f"median {statistics.median(honest):.3f}")
    for share, values in by_share.items():
        caught = sum(v < settings.disagreement_threshold for v in values) / len(values)
        print(f"   {share:>4.0%} of paragraphs altered: max {max(values):.3f}, median {statistics.median(values):.3f}"
              f" — clearly different (< {settings.disagreement_threshold}) {caught:.0%}")
    print(f"   a made-up page: max {max(fake):.3f}")
    print(f"   thresholds: agree ≥ {settings.agreement_threshold}, clearly different < "
          f"{settings.disagreement_threshold}")


def steady_state(settings: Settings, pool: Pool, seed: int, miners_count: int, jobs: int) -> None:
    world = World(settings, pool, PooledComparer(settings, pool), random.Random(seed))
    miners = [Miner(f"h{i}") for i in range(miners_count)]
    warm(world, miners)
    world.fetches = world.extra = 0
    for _ in range(jobs):
        world.job(world.rng.choice(miners), miners)
    share = world.extra / world.fetches
    print(f"2. extra fetches at steady state ({miners_count} trusted miners, {jobs:,} jobs): "
          f"{world.extra:,} of {world.fetches:,} fetches = {share:.1%} (goal ≤ 10 %)")


def detection(settings: Settings, pool: Pool, runs: int, seed: int, trusted_first: bool) -> list[int]:
    """Jobs a cheater at 20 % fetched until it was barred, per run (`cap` if never)."""
    cap = 1000
    out = []
    for run in range(runs):
        world = World(settings, pool, PooledComparer(settings, pool), random.Random(seed * 100_003 + run))
        trusted = Reputation(score=0.95, agreed=settings.trust_after, streak=settings.trust_after)
        honest = [Miner(f"h{i}", rep=trusted) for i in range(10)]
        cheater = Miner("cheater", cheat_rate=0.2)
        if trusted_first:
            cheater.rep = trusted
        miners = honest + [cheater]
        while cheater.rep.barred_at is None and cheater.jobs < cap:
            world.job(cheater, miners)
        out.append(cheater.jobs)
    return out


def report_detection(label: str, jobs: list[int]) -> None:
    ordered = sorted(jobs)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    within = sum(j <= 50 for j in jobs) / len(jobs)
    print(f"   {label}: p50 {statistics.median(ordered):.0f}, p99 {p99}, max {ordered[-1]} jobs; "
          f"barred within 50 of its jobs in {within:.1%} of {len(jobs)} runs (goal ≥ 99 %)")


def false_flags(settings: Settings, pool: Pool, seed: int, miners_count: int, jobs: int) -> None:
    world = World(settings, pool, PooledComparer(settings, pool), random.Random(seed + 17))
    miners = [Miner(f"h{i}") for i in range(miners_count)]
    for _ in range(jobs):
        world.job(world.rng.choice(miners), miners)
    barred = sum(m.rep.barred_at is not None for m in miners)
    print(f"4. honest miners wrongly flagged over {jobs:,} jobs ({miners_count} miners, all new at first): "
          f"{world.wrongly_outvoted} outvoted, {barred} barred (goal 0); "
          f"extra fetches {world.extra / world.fetches:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=40, help="articles")
    parser.add_argument("--variants", type=int, default=30, help="fetches of each article kept to draw from")
    parser.add_argument("--runs", type=int, default=1000, help="seeded runs per cheater scenario")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs of the steady-state and false-flag runs")
    parser.add_argument("--miners", type=int, default=20, help="honest miners of those runs")
    parser.add_argument("--alter-share", type=float, default=0.5,
                        help="share of an altered page's paragraphs the cheater makes up")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting other than its default, e.g. --set trust_after=10 (repeatable)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    settings = Settings(mode="test", **overrides)  # type: ignore[arg-type]
    t0 = time.monotonic()
    pool = Pool(args.pages, args.variants, args.alter_share, args.seed)
    similarities(settings, pool)
    steady_state(settings, pool, args.seed, args.miners, args.jobs)
    print(f"3. jobs until a cheater altering 20 % of its pages ({args.alter_share:.0%} of the paragraphs of each) "
          "is barred:")
    report_detection("starting as a new account", detection(settings, pool, args.runs, args.seed, False))
    report_detection("cheating once trusted", detection(settings, pool, args.runs, args.seed, True))
    false_flags(settings, pool, args.seed, args.miners, args.jobs)
    print(f"({time.monotonic() - t0:.0f} s; settings: check share new/suspect {settings.check_share_untrusted:.0%}, "
          f"trusted {settings.check_share_trusted:.0%}, trust from {settings.trust_threshold}, "
          f"after {settings.trust_after} agreeing checks, alpha {settings.trust_alpha}, "
          f"barred at {settings.trust_strikes} strikes)")


if __name__ == "__main__":
    main()
