"""What a mining server holds: the stream entries it is responsible for, their leases, and its connected miners.

Miners that announced the same policy form a `Group` (they accept the same jobs); each group keeps
its miners with free slots bucketed by how many they have free, so placing a job looks at each
group once however many miners are connected.

A miner's free slots are its capacity less its leases and its results waiting for their check
(`awaiting`): a miner that answers at once, without fetching, holds its slots as long as an
honest one while its results are checked. Its capacity follows its standing (`core.trust`): a
miner that is not trusted holds at most `CRAWLCOIN_UNTRUSTED_CAPACITY` jobs, a barred one none.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ada_url

from core.protocol.jobs import Job
from core.protocol.mining import MinerPolicy
from core.settings import Settings
from core.trust import Reputation, Standing
from core.validation import Vote
from miners.server.stream import Entry


def job_host(url: str) -> str:
    try:
        return ada_url.URL(url).hostname.rstrip(".").lower()
    except ValueError:
        return ""


def domain_blocked(host: str, blocked: frozenset[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in blocked)


@dataclass(eq=False, slots=True)
class Held:
    """A stream entry this server is responsible for, from XREADGROUP/XAUTOCLAIM to XACK."""

    entry: Entry
    host: str
    since: float = field(default_factory=time.monotonic)  # waiting for a miner since
    not_before: float = 0.0  # the domain is busy until then
    avoid: str | None = None  # the connection that just failed it, if another can take it
    votes: list[Vote] = field(default_factory=list)  # fetches so far, while a result waits for its check
    check_since: float | None = None  # when the check began
    check_failures: int = 0  # checking fetches that ended without a result

    @property
    def job(self) -> Job:
        assert self.entry.job is not None
        return self.entry.job

    def excludes(self, conn: "MinerConn") -> bool:
        """Whether `conn` may not fetch it to check it: an account (or a network) that fetched it already."""
        return any(v.miner_id == conn.user_id or (v.network is not None and v.network == conn.network)
                   for v in self.votes)


@dataclass(eq=False, slots=True)
class Lease:
    held: Held
    sid: str
    deadline: float
    delivered: bool = False  # the result is in; the lease (and the miner's slot) ends once it is written


@dataclass(eq=False)
class MinerConn:
    """One authenticated connection that announced its policy."""

    sid: str
    user_id: str
    username: str
    policy: MinerPolicy
    announced: int  # the capacity it asked for, within the server's cap
    max_body_bytes: int
    blocked: frozenset[str]
    settings: Settings
    network: str | None = None
    reputation: Reputation = field(default_factory=Reputation)
    leases: dict[str, Lease] = field(default_factory=dict)
    awaiting: set[str] = field(default_factory=set)  # keys of jobs whose result from it waits for its check here
    draining: bool = False
    batches: bool = False  # it takes `jobs`, several offers in a message
    booked: int = 0  # slots promised to jobs of the placement under way

    @property
    def capacity(self) -> int:
        return self.reputation.capacity(self.announced, self.settings)

    @property
    def standing(self) -> Standing:
        return self.reputation.standing(self.settings)

    @property
    def free(self) -> int:
        if self.draining:
            return 0
        return max(0, self.capacity - len(self.leases) - len(self.awaiting) - self.booked)

    def accepts(self, held: Held) -> bool:
        return held.job.method in self.policy.methods and not domain_blocked(held.host, self.blocked)


_VERDICTS = 4096  # (method, host) answers a group remembers


@dataclass(eq=False)
class Group:
    """The connected miners that announced one policy (methods, blocked domains): they accept the same jobs."""

    methods: frozenset[str]
    blocked: frozenset[str]
    size: int = 0
    free_slots: int = 0
    by_free: dict[int, dict[str, MinerConn]] = field(default_factory=dict)  # free slots → miners with that many
    verdicts: dict[tuple[str, str], bool] = field(default_factory=dict)

    def accepts(self, held: Held) -> bool:
        key = (held.job.method, held.host)
        verdict = self.verdicts.get(key)
        if verdict is None:
            if len(self.verdicts) >= _VERDICTS:
                self.verdicts.clear()
            verdict = self.verdicts[key] = key[0] in self.methods and not domain_blocked(held.host, self.blocked)
        return verdict

    def best(self, avoid: str | None, allowed: Callable[[MinerConn], bool] | None = None,
             look: int = 256) -> MinerConn | None:
        """The miner with the most free slots, not `avoid` unless it is the only one. Between equals, the one
        whose slots changed longest ago (a miner moves to the end of its bucket when a lease starts or ends),
        so miners take turns when jobs come one at a time. With `allowed`, only miners it allows, among the
        first `look` candidates (a check looks for a checker without walking ten thousand miners)."""
        fallback = None
        for n in sorted(self.by_free, reverse=True):
            for sid, conn in self.by_free[n].items():
                if allowed is not None:
                    look -= 1
                    if look < 0:
                        return fallback
                    if not allowed(conn):
                        continue
                if sid != avoid:
                    return conn
                fallback = fallback or conn
        return fallback
