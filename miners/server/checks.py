"""Checking volunteers' results before they are paid and delivered (the design is in DESIGN.md, "Trust").

When a miner returns a result that would settle its job (a page, or an error no other miner could
avoid), the server draws whether to check it, with the probability its miner's standing gives
(`core.trust`: every result of a new or suspect miner, a small random share of a trusted one's).
An unchecked result is written at once, as before. A checked one is *held*: nothing is stored or
paid, the miner's slot stays taken (`MinerConn.awaiting`), and the job goes back into the backlog
for a miner of another account and network (`Handout`). Each further fetch is a vote
(`core.validation.tally`): two that agree decide; two that do not call a third. The decided
result is written like any other, carrying its validation and the miners that checked it, so
the store pays the price to the delivered fetch's miner and a fee to each checker in the same
step (`core.storage.rules.settlement`); then the reputations of the miners the check judged
move, each miner held by the check is told (`checked`), and a miner barred by it is disconnected.

The votes live in the server that holds the job's stream entry, next to its lease. If that server
dies, the entry is taken over by another and fetched afresh: the held fetches are lost unpaid
and nothing is paid twice. A check that cannot find a further miner here, or whose window
(`CRAWLCOIN_VALIDATION_WINDOW_SECONDS`) passes, is decided as it stands: one fetch `unchecked`,
two that disagree `disputed`. A failed checking fetch (the checker's network, a lease that ran
out) counts against the check, not against the job's attempts, and after `max_attempts` of them
the check is decided as it stands too.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from core import metrics
from core.agreement import Comparer
from core.protocol.mining import Checked, ResultAck, ServerEvent
from core.schemas import Validation
from core.settings import Settings
from core.storage import Result
from core.trust import Reputation, Standing, TrustBook
from core.validation import MAX_VOTES, Verdict, Vote, tally
from miners.server.handout import Handout, Send
from miners.server.pool import Held, MinerConn
from miners.server.writer import ResultWriter

log = logging.getLogger(__name__)

Drop = Callable[[str, str], Awaitable[None]]  # (sid, why): disconnect a connection
HELD = ResultAck(ok=True, outcome="held")
_REFRESH_SECONDS = 10.0


class Checker:
    def __init__(self, settings: Settings, handout: Handout, writer: ResultWriter, trust: TrustBook, send: Send,
                 drop: Drop, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.handout = handout
        self.writer = writer
        self.trust = trust
        self._send = send
        self._drop = drop
        self._rng = rng or random.Random()
        # Checks that judge the same miner are decided one after another, each reading its voters' standing
        # afresh: a check that bars a miner and one that would pay it cannot overlap, so once barred it is
        # paid nothing more. Checks of different miners go on side by side.
        self._judging = KeyedLocks()

    # --- results ------------------------------------------------------------------------------

    async def settle(self, miner: MinerConn, held: Held, result: Result) -> ResultAck:
        """A result that would settle the job: write it, or hold it for a check, or count it as a vote."""
        if miner.standing is Standing.barred:
            self.handout.put_back(held, miner.sid)
            return ResultAck(ok=False, outcome="refused", error="this account is barred from mining")
        if not held.votes:
            if (self._rng.random() >= miner.reputation.check_share(self.settings)
                    or not self.handout.checker_exists(held, miner)):  # nobody here could check it: unchecked
                return await self.writer.record(held, result)
            held.check_since = time.monotonic()
        held.votes.append(Vote(result, miner.network))
        self.handout.change(miner, lambda c: c.awaiting.add(held.job.key))
        if len(held.votes) < 2:
            self.handout.put_back(held)
            return HELD
        async with self._judging(v.miner_id for v in held.votes):
            try:
                verdict = await self._tally(held, closing=len(held.votes) >= MAX_VOTES)
            except Exception:
                self.handout.put_back(held)  # decided when the next vote comes, or closed by the hand-out
                raise
            if not verdict.final:
                self.handout.put_back(held)
                return HELD
            return await self._decide(held, verdict, answer=miner.user_id)

    def failed(self, held: Held, why: str, avoid: str | None,
               last: Result | None = None) -> "asyncio.Future[ResultAck]":
        """A lease ended without a settling result. A checking fetch counts against the check, not the job."""
        if not held.votes:
            return self.writer.attempt_failed(held, why, last=last, avoid=avoid)
        held.check_failures += 1
        if held.check_failures >= self.settings.max_attempts:
            return asyncio.ensure_future(self.close(held))
        self.handout.put_back(held, avoid)
        done: asyncio.Future[ResultAck] = asyncio.get_running_loop().create_future()
        done.set_result(ResultAck(ok=True, outcome="retry"))
        return done

    async def close(self, held: Held) -> ResultAck:
        """Decide a check as it stands: no further fetch can be had in time."""
        async with self._judging(v.miner_id for v in held.votes):
            return await self._close(held)

    async def _close(self, held: Held) -> ResultAck:
        try:
            verdict = await self._tally(held, closing=True)
        except Exception as e:
            log.error("could not decide the check of %s (it is handed out again): %s", held.job.key, e)
            self.handout.put_back(held)
            return ResultAck(ok=False, error="internal error")
        if not verdict.final:  # every vote was a barred miner's: the job starts afresh
            held.check_since = None
            self.handout.put_back(held)
            return ResultAck(ok=True, outcome="retry")
        return await self._decide(held, verdict)

    def close_soon(self, held: Held) -> None:
        metrics.job_finished_when_done(asyncio.ensure_future(self.close(held)), held.job.due_at)

    # --- deciding -----------------------------------------------------------------------------

    async def _tally(self, held: Held, closing: bool) -> Verdict:
        """The verdict of the votes of miners not barred (a barred miner's fetch counts for nothing)."""
        try:
            reps = await self.trust.get_many(sorted({v.miner_id for v in held.votes}))
        except Exception as e:  # Valkey is down: decide on the votes alone, as if nobody were barred
            log.warning("could not read reputations for the check of %s: %s", held.job.key, e)
            reps = {}
        dropped = [v for v in held.votes if v.miner_id in reps and reps[v.miner_id].barred_at is not None]
        if dropped:
            held.votes = [v for v in held.votes if v not in dropped]
            self._forget(held, [v.miner_id for v in dropped])
        comparer = Comparer(self.settings.agreement_threshold, self.settings.disagreement_threshold)
        return await asyncio.to_thread(tally, held.votes, comparer, closing,
                                       lambda m: reps[m].score if m in reps else 0.0)

    async def _decide(self, held: Held, verdict: Verdict, answer: str | None = None) -> ResultAck:
        """Write the decided result, move the reputations it judged, tell the miners it held."""
        delivered = verdict.delivered
        assert delivered is not None
        ack = await self.writer.record(held, delivered)
        voters = [v.miner_id for v in held.votes]
        reps: dict[str, Reputation] = {}
        try:
            if ack.ok:
                reps = await self.trust.record(verdict.agreed, verdict.outvoted)
        except Exception as e:  # the result is written and paid; only the reputations did not move
            log.warning("could not record the reputations the check of %s decided: %s", held.job.key, e)
        for conn in [c for c in self.handout.miners.values() if c.user_id in reps]:
            self.handout.change(conn, _reputed(reps[conn.user_id]))
        # Only now are the voters' slots free: a miner this check barred gets no job in between.
        self._forget(held, voters)
        own: ResultAck | None = None
        for miner_id in dict.fromkeys(voters):
            outcome, coins = _share(miner_id, delivered, verdict, ack)
            if miner_id == answer:
                own = ResultAck(ok=ack.ok, outcome=outcome, coins=coins, error=ack.error)
            await self._tell(miner_id, held, outcome, coins, delivered.validation)
        metrics.check_decided(delivered.validation.value, len(verdict.outvoted))
        if delivered.validation is not Validation.unchecked or verdict.outvoted:
            log.info("check of %s: %s, delivered %s's fetch%s", held.job.key, delivered.validation.value,
                     delivered.miner_id, f"; outvoted {', '.join(verdict.outvoted)}" if verdict.outvoted else "")
        return own or ack

    def _forget(self, held: Held, miner_ids: list[str]) -> None:
        """The check no longer holds these miners' slots."""
        for conn in [c for c in self.handout.miners.values() if c.user_id in miner_ids]:
            if held.job.key in conn.awaiting:
                self.handout.change(conn, lambda c: c.awaiting.discard(held.job.key))

    async def _tell(self, miner_id: str, held: Held, outcome: str, coins: int, validation: Validation) -> None:
        for conn in [c for c in self.handout.miners.values() if c.user_id == miner_id]:
            message = Checked(key=held.job.key, outcome=outcome, coins=coins, validation=validation.value,
                              reputation=round(conn.reputation.score, 3), standing=conn.standing.value)
            try:
                await self._send(ServerEvent.checked, conn.sid, message.model_dump())
                if conn.standing is Standing.barred:
                    await self._drop(conn.sid, "this account is barred from mining: its results were outvoted "
                                               f"{conn.reputation.outvoted} times by other miners' fetches")
            except Exception as e:  # the miner may be gone; the check is decided regardless
                log.debug("could not tell %s about the check of %s: %s", conn.sid, held.job.key, e)

    # --- reputations of connected miners ----------------------------------------------------------

    async def refresh(self, stopping: asyncio.Event) -> None:
        """Re-read the reputations of connected miners now and then: checks decided on other servers move them."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):  # a stopping server does not wait out the pause
                await asyncio.wait_for(stopping.wait(), _REFRESH_SECONDS)
                return
            try:
                conns = list(self.handout.miners.values())
                reps = await self.trust.get_many(sorted({c.user_id for c in conns}))
                for conn in conns:
                    rep = reps.get(conn.user_id)
                    if rep is not None and rep != conn.reputation:
                        self.handout.change(conn, _reputed(rep))
                        if conn.standing is Standing.barred:
                            await self._drop(conn.sid, "this account is barred from mining")
            except Exception as e:
                log.warning("could not refresh miners' reputations: %s", e)


def _reputed(rep: Reputation) -> Callable[[MinerConn], None]:
    def apply(conn: MinerConn) -> None:
        conn.reputation = rep

    return apply


def _share(miner_id: str, delivered: Result, verdict: Verdict, ack: ResultAck) -> tuple[str, int]:
    """What one voter got from the decided check: (outcome, coins)."""
    if not ack.ok:
        return "retry", 0
    if miner_id == delivered.miner_id:
        return (ack.outcome or "paid"), ack.coins
    if miner_id in delivered.checked_by:
        return "fee", ack.coins if ack.outcome == "paid" else 0
    return ("outvoted" if miner_id in verdict.outvoted else "unpaid"), 0


class KeyedLocks:
    """A lock per key, taken for several keys at once (in sorted order, so two holders never wait on each
    other); a key's lock exists while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, keys: Iterable[str]) -> AsyncIterator[None]:
        wanted = sorted(set(keys))
        for k in wanted:
            self._locks.setdefault(k, (asyncio.Lock(), [0]))[1][0] += 1
        taken: list[asyncio.Lock] = []
        try:
            for k in wanted:
                lock = self._locks[k][0]
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in taken:
                lock.release()
            for k in wanted:
                users = self._locks[k][1]
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[k]
