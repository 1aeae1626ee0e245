"""Handing jobs to connected miners: who may take what, leases, and what happens when one ends.

One `Handout` per server process. It reads only as many stream entries as its miners have
free slots, gives each job to a miner whose announced policy accepts it once the job's domain
has budget, and holds a lease per job. A lease ends in one of three ways: the miner returns a
result (see `ResultWriter`), the miner disconnects (the job goes back at once), or the lease
expires (the miner is told and the job goes back). A job that went back counts one attempt;
at `max_attempts` the store refunds it.

Nothing here costs time in proportion to the number of connected miners: miners that
announced the same policy form a group (they accept the same jobs), each group keeps its
miners with free slots bucketed by how many they have free, and the counts of free slots are
kept up to date as leases begin and end. So placing a job looks at each group once, and ten
thousand idle miners cost a server no more per job than a hundred.

A job whose result waits for its check (`Held.votes`) goes back into the backlog and is leased
to a miner of another account and network (`Held.excludes`), a trusted one when one is free. If
no such miner is connected here, or the check's window passes, it is handed to `close`, which
decides it as it stands (`miners.server.checks`).
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from core.metrics import LEASES_EXPIRED, LEASES_RECLAIMED
from core.outage import VALKEY_DOWN, outage
from core.protocol.mining import JobOffer, Revoke, ServerEvent
from core.settings import Settings
from core.trust import Standing
from miners.server.pool import Group, Held, Lease, MinerConn, job_host
from miners.server.stream import Entry, JobStream

log = logging.getLogger(__name__)

_BACKLOG_MAX = 1000  # jobs one server holds waiting for a miner, however many slots its miners have
_SWEEP_SECONDS = 0.5  # how often the hand-out looks at every job of its backlog, free miners or not
READ_BLOCK_MS = 100
"""Longest wait for new jobs on the stream. A job put back meanwhile is placed after it: a result waiting
for its check waited up to a second for its checking fetch with 1,000 ms (measured with bench/e2e.py at 50
orders: scheduled → file 1.03 s at the median); idle, a read every 100 ms costs next to nothing."""

Send = Callable[[str, str, dict], Awaitable[None]]  # (event, sid, payload)
Fail = Callable[[Held, str, str | None], None]  # a lease ended without a result: (entry, why, avoid sid)
Close = Callable[[Held], None]  # a result waiting for its check is to be decided as it stands


class Handout:
    def __init__(self, settings: Settings, stream: JobStream, send: Send, fail: Fail, close: Close) -> None:
        self.settings = settings
        self.stream = stream
        self._send = send
        self._fail = fail
        self._close = close
        self.miners: dict[str, MinerConn] = {}
        self.backlog: deque[Held] = deque()
        self.held: dict[str, Held] = {}  # by entry id: everything to keep alive
        self.leases: dict[str, Lease] = {}  # by job key
        self.wake = asyncio.Event()
        self._groups: dict[tuple[frozenset[str], frozenset[str]], Group] = {}
        self._group_of: dict[str, Group] = {}  # by sid
        self._capacity = 0  # of all connected miners
        self._trusted = 0  # connected miners that are trusted
        self.free_slots = 0  # of all connected miners
        self._next_timer: float | None = None  # when the first job waiting for its domain's budget may go
        self._next_sweep = 0.0  # when to look at the whole backlog again (see `_place`)

    @property
    def _backlog_cap(self) -> int:
        """How many jobs to hold waiting for a miner: enough to refill every slot a few times, within bounds."""
        return min(_BACKLOG_MAX, max(50, 4 * self._capacity))

    def _refresh(self, conn: MinerConn, before: int) -> None:
        """Move `conn` to its bucket after its free slots went from `before` to what they are now."""
        after = conn.free
        group = self._group_of.get(conn.sid)
        if after == before or group is None:
            return
        if before > 0:
            bucket = group.by_free[before]
            del bucket[conn.sid]
            if not bucket:
                del group.by_free[before]
        if after > 0:
            group.by_free.setdefault(after, {})[conn.sid] = conn
        group.free_slots += after - before
        self.free_slots += after - before

    def change(self, conn: MinerConn, change: Callable[[MinerConn], None]) -> None:
        """Apply `change` to a connected miner's reputation or awaiting results, keeping the counts right."""
        if conn.sid not in self.miners:
            change(conn)
            return
        before, capacity, trusted = conn.free, conn.capacity, conn.standing is Standing.trusted
        change(conn)
        self._capacity += conn.capacity - capacity
        self._trusted += (conn.standing is Standing.trusted) - trusted
        self._refresh(conn, before)
        self.wake.set()

    # --- miners -----------------------------------------------------------------------------

    def add_miner(self, conn: MinerConn) -> None:
        self.miners[conn.sid] = conn
        key = (frozenset(conn.policy.methods), conn.blocked)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(*key)
        group.size += 1
        self._group_of[conn.sid] = group
        self._capacity += conn.capacity
        self._trusted += conn.standing is Standing.trusted
        self._refresh(conn, 0)
        self.wake.set()

    def remove_miner(self, sid: str) -> None:
        conn = self.miners.pop(sid, None)
        if conn is None:
            return
        self._capacity -= conn.capacity
        self._trusted -= conn.standing is Standing.trusted
        before = conn.free
        conn.draining = True
        self._refresh(conn, before)
        group = self._group_of.pop(sid)
        group.size -= 1
        if group.size == 0:
            del self._groups[(group.methods, group.blocked)]
        for lease in list(conn.leases.values()):
            self.end_lease(lease)
            if not lease.delivered:  # a delivered result is being written already
                self._fail(lease.held, "the miner disconnected", None)

    def drain(self, sid: str) -> int:
        conn = self.miners.get(sid)
        if conn is None:
            return 0
        before = conn.free
        conn.draining = True
        self._refresh(conn, before)
        return len(conn.leases)

    def end_lease(self, lease: Lease) -> None:
        key = lease.held.job.key
        conn = self.miners.get(lease.sid)
        if conn is not None and conn.leases.get(key) is lease:
            before = conn.free
            del conn.leases[key]
            self._refresh(conn, before)
        if self.leases.get(key) is lease:  # the job may be leased to another miner already (it went back first)
            del self.leases[key]
        self.wake.set()

    def lease_of(self, sid: str, key: str) -> Lease | None:
        lease = self.leases.get(key)
        return lease if lease is not None and lease.sid == sid else None

    # --- entries ----------------------------------------------------------------------------

    def hold(self, entry: Entry) -> Held:
        assert entry.job is not None
        held = Held(entry, job_host(entry.job.url))
        self.held[entry.id] = held
        return held

    def put_back(self, held: Held, avoid: str | None = None) -> None:
        """A job whose lease ended without a final result waits for a miner again, first in line."""
        held.avoid, held.since, held.not_before = avoid, time.monotonic(), 0.0
        self.backlog.appendleft(held)
        self.wake.set()

    def release(self, entry_id: str) -> None:
        """The entry is acknowledged (or handed on): this server no longer keeps it alive."""
        self.held.pop(entry_id, None)

    # --- loops ------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            self.wake.clear()
            try:
                await self._place()
                count = min(self.free_slots, self._backlog_cap - len(self.backlog))
                if count > 0:
                    # Not longer: a job put back meanwhile (a result to check, a lease ended) waits for the read.
                    for entry in await self.stream.read(count, READ_BLOCK_MS):
                        if entry.job is None:
                            await self.stream.finish([entry.id], [])  # unreadable: nothing anyone can do
                            continue
                        self.backlog.append(self.hold(entry))
                    if not self.backlog:
                        continue
                    await self._place()
                outage("Valkey").ok()
                await self._sleep(stopping)
            except asyncio.CancelledError:
                raise
            except VALKEY_DOWN as e:
                outage("Valkey").failed(e, "hand-out")
                await asyncio.sleep(1)
            except Exception:
                log.exception("hand-out loop error; retrying in 1 s")
                await asyncio.sleep(1)

    async def _sleep(self, stopping: asyncio.Event) -> None:
        now = time.monotonic()
        timer = self._next_timer if self._next_timer is not None and self._next_timer > now else None
        delay = (timer if timer is not None else now + 1.0) - now
        if self.backlog and timer is None:
            delay = 0.5  # jobs no free miner takes yet: look again soon (requeue check)
        if self.free_slots > 0 and not self.backlog:
            return  # free miners, nothing waiting: go straight back to reading
        try:
            await asyncio.wait_for(self.wake.wait(), timeout=max(0.01, min(delay, 1.0)))
        except TimeoutError:
            pass

    async def _place(self) -> None:
        """Give waiting jobs to miners: choose a miner per job, then ask the domain budgets at once."""
        now = time.monotonic()
        self._next_timer = None
        # A pass once every result frees a slot must not cost the length of the backlog: while no miner
        # has a free slot nothing can be placed, and what waits on time alone (a check's window, a job
        # no miner here takes) is looked at by a sweep of the whole backlog now and then.
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + _SWEEP_SECONDS
        open_groups = [g for g in self._groups.values() if g.free_slots > 0]
        unplaced: set[tuple[str, str]] = set()  # (method, host) of plain jobs no free miner took in this pass
        picks: list[tuple[Held, MinerConn]] = []
        for held in list(self.backlog):
            if not open_groups and not sweep:
                break
            if held.not_before > now:
                self._next_timer = min(self._next_timer or held.not_before, held.not_before)
                continue
            if held.votes and (now - (held.check_since or now) > self.settings.validation_window_seconds
                               or not self.checker_exists(held)):
                self._remove_from_backlog(held)
                self._close(held)  # decided as it stands: no further fetch can be had in time
                continue
            # No free miner here may also mean no miner at all (a restarted server holding the
            # jobs it took over): such jobs must still go back to the stream for other servers.
            plain = (held.job.method, held.host) if not held.votes and held.avoid is None else None
            conn = None if plain in unplaced else self._choose(held, open_groups)
            if conn is None:
                if plain is not None:
                    unplaced.add(plain)
                if now - held.since > self.settings.lease_seconds and not any(
                        g.accepts(held) for g in self._groups.values()):
                    self._remove_from_backlog(held)
                    self.release(held.entry.id)
                    await self.stream.requeue(held.entry)  # maybe a miner on another server takes it
                continue
            before = conn.free
            conn.booked += 1
            self._refresh(conn, before)
            open_groups = [g for g in open_groups if g.free_slots > 0]
            picks.append((held, conn))
        if not picks:
            return
        try:
            waits = await self.stream.take_budget([h.host for h, _ in picks])
        finally:
            for _, conn in picks:
                before = conn.free
                conn.booked -= 1
                self._refresh(conn, before)
        now = time.monotonic()
        offers: dict[str, tuple[MinerConn, list[dict]]] = {}
        for (held, conn), wait in zip(picks, waits, strict=True):
            if wait > 0:
                held.not_before = now + wait
                self._next_timer = min(self._next_timer or held.not_before, held.not_before)
            elif conn.sid in self.miners and conn.free > 0:
                self._remove_from_backlog(held)
                offers.setdefault(conn.sid, (conn, []))[1].append(self._lease(held, conn, now))
            else:  # the miner left meanwhile; the booked slot is spent, the job waits its turn
                held.not_before = now + 0.05
        for conn, offered in offers.values():
            if conn.batches and len(offered) > 1:
                await self._send(ServerEvent.jobs, conn.sid, {"jobs": offered})
            else:
                for offer in offered:
                    await self._send(ServerEvent.job, conn.sid, offer)

    def _choose(self, held: Held, groups: list[Group]) -> MinerConn | None:
        """The miner with the most free slots among those whose policy accepts the job, not the one that
        just failed it unless it is the only one. A job whose result waits for its check goes only to a miner
        of another account and network, a trusted one if any is free."""
        if held.votes:
            trusted = (self._choose_among(held, groups, lambda c: c.standing is Standing.trusted
                                          and not held.excludes(c)) if self._trusted else None)
            return trusted or self._choose_among(held, groups, lambda c: not held.excludes(c))
        conn = self._choose_among(held, groups, None)
        if conn is not None and self._keeps_slot_for_checks(conn):
            conn = self._choose_among(held, groups, lambda c: not self._keeps_slot_for_checks(c))
        return conn

    def _keeps_slot_for_checks(self, conn: MinerConn) -> bool:
        """Whether a miner whose every result is checked is down to its last free slot, which it keeps for
        fetching other miners' jobs to check them. Otherwise new miners handed more jobs than they have
        slots fill every slot with results waiting for a check that no miner has a slot left to fetch, and
        all of them wait out the check's window and go unchecked."""
        return (conn.free <= 1 < conn.capacity and len(self.miners) > 1 and conn.standing is not Standing.trusted
                and self.settings.check_share_untrusted > 0)

    def _choose_among(self, held: Held, groups: list[Group],
                      allowed: Callable[[MinerConn], bool] | None) -> MinerConn | None:
        best: MinerConn | None = None
        for group in groups:
            if group.free_slots <= 0 or not group.accepts(held):
                continue
            conn = group.best(held.avoid, allowed)
            if conn is None:
                continue
            if best is None or (conn.sid != held.avoid, conn.free) > (best.sid != held.avoid, best.free):
                best = conn
        return best

    def checker_exists(self, held: Held, fetched_by: MinerConn | None = None) -> bool:
        """Whether a miner connected here, free or not, could fetch the job to check its result (or the result
        `fetched_by` is about to give)."""
        def other(conn: MinerConn) -> bool:
            return fetched_by is None or (conn.user_id != fetched_by.user_id
                                          and (conn.network is None or conn.network != fetched_by.network))

        return any(not conn.draining and conn.capacity > 0 and conn.accepts(held) and not held.excludes(conn)
                   and other(conn) for conn in self.miners.values())

    def _remove_from_backlog(self, held: Held) -> None:
        try:
            self.backlog.remove(held)
        except ValueError:
            pass

    def _lease(self, held: Held, conn: MinerConn, now: float) -> dict:
        """Lease the job to the miner; the offer to send it."""
        job = held.job
        lease = Lease(held, conn.sid, now + self.settings.lease_seconds)
        before = conn.free
        conn.leases[job.key] = lease
        self._refresh(conn, before)
        self.leases[job.key] = lease
        return JobOffer(key=job.key, lease_seconds=self.settings.lease_seconds, **job.request_fields()).model_dump()

    async def expire_leases(self, stopping: asyncio.Event) -> None:
        """End leases whose miner kept the job too long; tell the miner, put the job back."""
        while not stopping.is_set():
            await asyncio.sleep(min(0.5, self.settings.lease_seconds / 4))
            now = time.monotonic()
            for lease in [lease for lease in self.leases.values() if lease.deadline <= now and not lease.delivered]:
                self.end_lease(lease)
                LEASES_EXPIRED.inc()
                try:
                    revoke = Revoke(key=lease.held.job.key, reason="the lease expired")
                    await self._send(ServerEvent.revoke, lease.sid, revoke.model_dump())
                except Exception as e:  # the miner may be gone already; the job goes on regardless
                    log.debug("could not tell %s that its lease of %s expired: %s", lease.sid, lease.held.job.key, e)
                self._fail(lease.held, "the lease expired", lease.sid)  # someone else, if anyone

    async def keep_alive(self, stopping: asyncio.Event) -> None:
        """Re-claim held entries to this server often enough that none looks abandoned."""
        period = max(0.2, min(5.0, self.settings.lease_seconds / 4))
        while not stopping.is_set():
            await asyncio.sleep(period)
            try:
                await self.stream.keep(list(self.held))
            except VALKEY_DOWN as e:
                outage("Valkey").failed(e, "renewing held entries")
            except Exception:
                log.exception("could not renew held entries")

    async def reclaim(self, stopping: asyncio.Event) -> None:
        """Take over entries of servers that stopped renewing them (dead), as failed attempts."""
        lease_ms = round(self.settings.lease_seconds * 1000)
        period = max(0.2, min(5.0, self.settings.lease_seconds / 2))
        rounds = 0
        while not stopping.is_set():
            await asyncio.sleep(period)
            try:
                for entry in await self.stream.reclaim(lease_ms, 100):
                    if entry.id in self.held:
                        continue  # ours already (we were stalled); nothing changed
                    if entry.job is None:
                        await self.stream.finish([entry.id], [])
                        continue
                    self._fail(self.hold(entry), "its mining server stopped", None)
                    LEASES_RECLAIMED.inc()
                rounds += 1
                if rounds % 20 == 0:
                    await self.stream.forget_idle_consumers(10 * lease_ms + 600_000)
            except VALKEY_DOWN as e:
                outage("Valkey").failed(e, "reclaiming abandoned entries")
            except Exception:
                log.exception("could not reclaim abandoned entries")
