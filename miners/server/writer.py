"""Group commit of finished jobs: one store transaction and one Valkey round trip per batch.

Results and failed attempts queue up while the previous batch is being written; the next
batch takes everything that is waiting. A miner's `result` call is answered only after its
batch is durable: stored and paid in the store, then acknowledged on the job stream and
announced on the results stream. A crash between the two leaves the entry pending; whoever
delivers it again finds the result stored and is not paid twice.
"""

import asyncio
import logging
from dataclasses import dataclass

from core.outage import VALKEY_DOWN, outage
from core.protocol.mining import ResultAck
from core.protocol.notices import ResultNotice
from core.schemas import RepetitionState
from core.settings import Settings
from core.storage import Recorded, Repetition, Result, ResultOutcome, Store
from miners.server.handout import Handout, Held
from miners.server.stream import JobStream

log = logging.getLogger(__name__)

_BATCH = 200
_OPEN = (RepetitionState.queued, RepetitionState.leased)


@dataclass(slots=True)
class _Record:
    held: Held
    result: Result
    done: asyncio.Future[ResultAck]


@dataclass(slots=True)
class _Attempt:
    held: Held
    why: str
    last: Result | None = None
    avoid: str | None = None
    done: asyncio.Future[ResultAck] | None = None


class ResultWriter:
    def __init__(self, settings: Settings, store: Store, stream: JobStream, handout: Handout) -> None:
        self.settings = settings
        self.store = store
        self.stream = stream
        self.handout = handout
        self._queue: asyncio.Queue[_Record | _Attempt] = asyncio.Queue()

    def record(self, held: Held, result: Result) -> asyncio.Future[ResultAck]:
        """Store a result that settles its job (a page, or an error no other miner could avoid)."""
        done: asyncio.Future[ResultAck] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Record(held, result, done))
        return done

    def attempt_failed(self, held: Held, why: str, last: Result | None = None,
                       avoid: str | None = None) -> asyncio.Future[ResultAck]:
        """Count a lease that ended without a settling result; the job goes back unless it is spent."""
        done: asyncio.Future[ResultAck] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Attempt(held, why, last, avoid, done))
        return done

    async def run(self, stopping: asyncio.Event) -> None:
        while not (stopping.is_set() and self._queue.empty()):
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
                outage("the store").ok()
            except Exception as e:  # the store or Valkey is down: one line per outage, not per batch
                outage("Valkey" if isinstance(e, VALKEY_DOWN) else "the store").failed(
                    e, f"writing a batch of {len(batch)} finished jobs")
                for item in batch:  # left pending in the stream: taken over after the lease
                    self.handout.release(item.held.entry.id)
                    if item.done is not None and not item.done.done():
                        item.done.set_result(ResultAck(ok=False, error=_NOT_STORED))

    async def _write(self, batch: list[_Record | _Attempt]) -> None:
        records = [i for i in batch if isinstance(i, _Record)]
        attempts = [i for i in batch if isinstance(i, _Attempt)]
        outcomes = await asyncio.to_thread(self._store_records, records)
        states = await asyncio.to_thread(self._store_attempts, attempts)
        acked: list[str] = []
        notices: list[ResultNotice] = []
        answers: list[tuple[asyncio.Future[ResultAck] | None, ResultAck]] = []
        for rec, (outcome, coins) in zip(records, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.error("could not store the result of %s: %s", rec.held.job.key, outcome)
                self.handout.release(rec.held.entry.id)
                answers.append((rec.done, ResultAck(ok=False, error=_NOT_STORED)))
                continue
            acked.append(rec.held.entry.id)
            if outcome in (ResultOutcome.paid, ResultOutcome.refunded):
                notices.append(_notice(rec.result, outcome.value))
            answers.append((rec.done, ResultAck(ok=True, outcome=outcome.value, coins=coins)))
        for att, rep in zip(attempts, states, strict=True):
            if isinstance(rep, BaseException):
                log.error("could not count a failed attempt at %s: %s", att.held.job.key, rep)
                self.handout.put_back(att.held, att.avoid)
                answers.append((att.done, ResultAck(ok=True, outcome="retry")))
            elif rep is not None and rep.state in _OPEN:
                self.handout.put_back(att.held, att.avoid)
                answers.append((att.done, ResultAck(ok=True, outcome="retry")))
            else:
                acked.append(att.held.entry.id)
                if rep is not None and rep.state is RepetitionState.failed and att.last is not None:
                    notices.append(_notice(att.last, "failed"))
                final = rep.state.value if rep is not None else ResultOutcome.unknown.value
                answers.append((att.done, ResultAck(ok=True, outcome=final)))
                if rep is not None and rep.state is RepetitionState.failed:
                    log.info("%s failed after %d attempts (%s)", att.held.job.key, rep.attempts, att.why)
        await self.stream.finish(acked, notices)
        for entry_id in acked:
            self.handout.release(entry_id)
        for done, ack in answers:
            if done is not None and not done.done():
                done.set_result(ack)

    def _store_records(self, records: list[_Record]) -> list[tuple[ResultOutcome | BaseException, int]]:
        if not records:
            return []
        results = [r.result for r in records]
        try:
            outcomes: list[Recorded | BaseException] = list(self.store.record_results(results))
        except Exception:  # one bad result must not hold up the others: write them one by one
            outcomes = []
            for result in results:
                try:
                    outcomes.append(self.store.record_result(result))
                except Exception as e:
                    outcomes.append(e)
        return [(o, 0) if isinstance(o, BaseException) else (o.outcome, o.coins) for o in outcomes]

    def _store_attempts(self, attempts: list[_Attempt]) -> list[Repetition | None | BaseException]:
        out: list[Repetition | None | BaseException] = []
        for att in attempts:
            try:
                out.append(self.store.fail_attempt(att.held.job.key, self.settings.max_attempts, att.last))
            except Exception as e:
                out.append(e)
        return out


_NOT_STORED = "the server could not store this result; the job will be fetched again"


def _notice(result: Result, outcome: str) -> ResultNotice:
    return ResultNotice(key=result.job_key, order_id=result.order_id, n=result.n, outcome=outcome)
