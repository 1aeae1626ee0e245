"""Bad miners: refused at connect, told what is wrong, dropped when abusive. Nothing they send is
stored, no coin moves for them, and an honest miner on the same server is not disturbed."""

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import socketio

from core.protocol.mining import NAMESPACE, MinerEvent, MinerPolicy, ServerEvent
from tests.miners.server.conftest import Market, PageServer, Processes, wait_for


class RawMiner:
    """A hand-driven Socket.IO miner that says exactly what the test tells it to."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url, self.token = url, token
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.jobs: asyncio.Queue[dict] = asyncio.Queue()
        self.problems: list[str] = []
        self.revoked: list[str] = []
        self.refusal: str | None = None
        self.disconnected = asyncio.Event()
        self.sio.on(ServerEvent.job, self.jobs.put, namespace=NAMESPACE)
        self.sio.on(ServerEvent.problem, lambda d: self.problems.append(d["message"]), namespace=NAMESPACE)
        self.sio.on(ServerEvent.revoke, lambda d: self.revoked.append(d["key"]), namespace=NAMESPACE)
        self.sio.on("connect_error", self._refused, namespace=NAMESPACE)
        self.sio.on("disconnect", lambda *a: self.disconnected.set(), namespace=NAMESPACE)

    def _refused(self, data: Any) -> None:
        self.refusal = data.get("message") if isinstance(data, dict) else str(data)

    async def connect(self, policy: dict | None = None) -> dict:
        auth = {"token": self.token} if self.token is not None else None
        await self.sio.connect(self.url, auth=auth, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=10)
        return await self.call(MinerEvent.hello, policy if policy is not None else MinerPolicy(capacity=1).model_dump())

    async def call(self, event: str, *data: Any) -> Any:
        return await self.sio.call(event, *data, namespace=NAMESPACE, timeout=15)

    async def close(self) -> None:
        await self.sio.disconnect()


def result_for(key: str, **overrides: Any) -> dict:
    payload = {"key": key, "status": 200, "final_url": "http://127.0.0.1/x", "headers": {}, "body": b"forged",
               "truncated": False, "elapsed_ms": 5, "error": None, "error_text": None}
    payload.update(overrides)
    return payload


@pytest.mark.parametrize(("token", "message"), [
    (None, "authentication failed: connect with auth"),
    ("cc_0123456789abcdef_nope", "authentication failed: unknown API token"),
    ("not a token", "authentication failed: malformed API token"),
    ("revoked", "authentication failed: this API token was revoked"),
    ("results-only", "authentication failed: this API token lacks the 'mine' scope"),
])
def test_a_miner_without_a_valid_mine_token_is_refused(market: Market, mining_server: str, token: str | None,
                                                       message: str) -> None:
    user = market.user()
    if token == "revoked":
        token = market.token(user)
        market.store.revoke_api_token(user.id, token.split("_")[1], datetime.now(UTC))
    elif token == "results-only":
        token = market.token(user, scopes=("results",))

    async def attempt() -> str | None:
        miner = RawMiner(mining_server, token)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await miner.connect()
        await miner.close()
        return miner.refusal

    assert message in (asyncio.run(attempt()) or "")


def test_bad_results_are_refused_clearly_and_change_nothing(market: Market, mining_server: str,
                                                            pages: PageServer) -> None:
    customer = market.user(coins=3)
    cheat, token = market.miner()
    order = market.order(customer, pages.url("/page/bait"), runs=1)
    other = market.order(customer, pages.url("/page/other"), runs=1)

    async def misbehave() -> tuple[list[Any], list[str]]:
        miner = RawMiner(mining_server, token)
        welcome = await miner.connect(MinerPolicy(capacity=1, max_body_bytes=4096).model_dump())
        assert welcome["max_body_bytes"] == 4096
        job = await asyncio.wait_for(miner.jobs.get(), 15)
        held = job["key"]
        other_key = f"{other.id}:1" if held != f"{other.id}:1" else f"{order.id}:1"
        answers = [
            await miner.call(MinerEvent.result, result_for(other_key)),  # a job it does not hold
            await miner.call(MinerEvent.result, result_for("nonsense")),
            await miner.call(MinerEvent.result, result_for(held, body="a str, not bytes")),
            await miner.call(MinerEvent.result, result_for(held, status="200")),
            await miner.call(MinerEvent.result, result_for(held, error="made_up_error")),
            await miner.call(MinerEvent.result, result_for(held, status=None)),
            await miner.call(MinerEvent.result, {"key": held}),
            await miner.call(MinerEvent.result, ["not", "an", "object"]),
            await miner.call(MinerEvent.result, result_for(held, unexpected="field")),
            await miner.call("steal_coins", {"amount": 100}),
            await miner.call(MinerEvent.result, result_for(held, body=b"x" * 5000)),  # over its own cap: job goes back
        ]
        await miner.close()
        return answers, miner.problems

    answers, problems = asyncio.run(misbehave())
    errors = [a["error"] for a in answers]
    assert all(a["ok"] is False for a in answers)
    assert "is not leased to this connection" in errors[0] and "is not leased" in errors[1]
    assert errors[2].startswith("malformed result: body")
    assert errors[3].startswith("malformed result: status")
    assert errors[4].startswith("malformed result: error")
    assert errors[5] == "malformed result: a result without an error needs a status"
    assert errors[6].startswith("malformed result: final_url")
    assert errors[7].startswith("malformed result")
    assert errors[8].startswith("malformed result: unexpected")
    assert errors[9].startswith("unknown event 'steal_coins'")
    assert "exceeds this connection's cap of 4096 bytes" in errors[10]
    assert problems[:3] == errors[:3], "each error is also sent as a `problem` event"
    assert market.store.list_results(order.id) == [] and market.store.list_results(other.id) == []
    assert market.balance(cheat) == 0 and market.escrow(order) == 1 and market.escrow(other) == 1
    assert "Traceback" not in (market.settings.data_dir / "x").as_posix()


def test_junk_bursts_get_a_connection_dropped_and_spare_the_honest_miner(market: Market, mining_server: str,
                                                                         pages: PageServer,
                                                                         processes: Processes) -> None:
    customer = market.user(coins=20)
    honest, honest_token = market.miner()
    cheat, cheat_token = market.miner()
    processes.miner(mining_server, honest_token, "--concurrency", "2")

    async def flood() -> tuple[bool, list[str]]:
        miner = RawMiner(mining_server, cheat_token)
        await miner.connect(MinerPolicy(capacity=1, methods=["POST"]).model_dump())  # takes no GET jobs
        for i in range(300):
            try:
                await miner.sio.emit(f"junk-{i}", {"x": "y" * 100}, namespace=NAMESPACE)
                await miner.sio.emit(MinerEvent.result, {"key": f"forged:{i}"}, namespace=NAMESPACE)
            except socketio.exceptions.BadNamespaceError:
                break  # dropped already
        await asyncio.wait_for(miner.disconnected.wait(), 15)
        dropped = miner.disconnected.is_set()
        await miner.close()
        return dropped, miner.problems

    dropped, problems = asyncio.run(flood())
    assert dropped and "disconnecting" in problems[-1]
    order = market.order(customer, pages.url("/page/honest"), runs=5)
    wait_for(lambda: len(market.stored(order)) == 5, 30, "the honest miner's results")
    assert market.balance(honest) == 5 and market.balance(cheat) == 0


def test_a_miner_answering_faster_than_the_message_rate_limit_is_not_dropped(market: Market, mining_server: str,
                                                                              pages: PageServer) -> None:
    """The flood limit (100 messages a second beyond a burst of 200) is for messages nobody asked for: results
    of the jobs a miner holds come as fast as jobs are handed out, and a fast miner on a fast site answers
    hundreds a second. (It was dropped as a flood, and reconnected seconds later, once the hand-out gave
    a domain's jobs many at a time.)"""
    runs = 600
    customer = market.user(coins=runs)
    miner_user, token = market.miner()
    order = market.order(customer, pages.url("/page/fast"), runs=runs)

    async def answer_at_once() -> tuple[int, float, list[str], bool]:
        miner = RawMiner(mining_server, token)
        await miner.connect(MinerPolicy(capacity=32).model_dump())
        started, answered = time.monotonic(), 0

        async def answer(job: dict) -> None:
            ack = await miner.call(MinerEvent.result, result_for(job["key"], final_url=job["url"]))
            assert ack["ok"], ack

        tasks = []
        while answered < runs:
            job, gone = asyncio.ensure_future(miner.jobs.get()), asyncio.ensure_future(miner.disconnected.wait())
            await asyncio.wait({job, gone}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            if not job.done():  # dropped, or no job came
                job.cancel()
                break
            tasks.append(asyncio.create_task(answer(job.result())))
            answered += 1
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.monotonic() - started
        dropped = miner.disconnected.is_set()
        await miner.close()
        return answered, elapsed, miner.problems, dropped

    answered, elapsed, problems, dropped = asyncio.run(answer_at_once())
    assert not dropped and problems == [], problems
    assert answered == runs and len(market.stored(order)) == runs
    assert market.balance(miner_user) == runs
    print(f"{runs} results in {elapsed:.1f} s ({runs / elapsed:.0f}/s, the flood limit's refill is 100/s)")


def test_a_message_larger_than_the_transport_allows_drops_the_connection(market: Market, mining_server: str,
                                                                         pages: PageServer) -> None:
    customer = market.user(coins=1)
    _, token = market.miner()
    order = market.order(customer, pages.url("/page/huge"), runs=1)

    async def oversize() -> bool:
        miner = RawMiner(mining_server, token)
        await miner.connect()
        job = await asyncio.wait_for(miner.jobs.get(), 15)
        body = b"x" * (market.settings.result_body_max_bytes + 200 * 1024)
        await miner.sio.emit(MinerEvent.result, result_for(job["key"], body=body), namespace=NAMESPACE)
        await asyncio.wait_for(miner.disconnected.wait(), 15)
        await miner.close()
        return True

    assert asyncio.run(oversize())

    def attempt() -> object:
        [rep] = market.store.get_repetitions(order.id, [1])
        return rep if rep.attempts else None

    # the server records the failed attempt after it saw the disconnect, a moment after the miner did
    wait_for(attempt, 15, "the failed attempt to be recorded")
    [rep] = market.store.get_repetitions(order.id, [1])
    assert rep.state.value == "queued" and rep.attempts == 1, "the job went back for another miner"
    assert market.store.list_results(order.id) == [] and market.escrow(order) == 1


def test_a_lease_that_expires_goes_to_another_miner_and_the_late_result_is_refused(
        market: Market, mining_server: str, pages: PageServer) -> None:
    customer = market.user(coins=1)
    slow, slow_token = market.miner()
    quick, quick_token = market.miner()
    order = market.order(customer, pages.url("/page/late"), runs=1)

    async def run() -> tuple[list[str], dict, dict]:
        first = RawMiner(mining_server, slow_token)
        await first.connect()
        job = await asyncio.wait_for(first.jobs.get(), 15)
        second = RawMiner(mining_server, quick_token)
        await second.connect()
        again = await asyncio.wait_for(second.jobs.get(), 15)  # after the 3 s lease
        assert again["key"] == job["key"]
        late = await first.call(MinerEvent.result, result_for(job["key"]))
        on_time = await second.call(MinerEvent.result, result_for(job["key"], body=b"on time"))
        await first.close()
        await second.close()
        return first.revoked, late, on_time

    revoked, late, on_time = asyncio.run(run())
    assert revoked == [f"{order.id}:1"]
    assert late["ok"] is False and "is not leased to this connection" in late["error"]
    assert on_time == {"ok": True, "outcome": "paid", "coins": 1, "error": None}
    assert market.store.get_result(f"{order.id}:1").body == b"on time"  # type: ignore[union-attr]
    assert market.balance(quick) == 1 and market.balance(slow) == 0


def test_a_job_whose_miners_keep_vanishing_is_refunded_after_the_attempt_limit(
        market: Market, mining_server: str, pages: PageServer) -> None:
    customer = market.user(coins=1)
    _, token = market.miner()
    order = market.order(customer, pages.url("/page/cursed"), runs=1)

    async def vanish_three_times() -> None:
        for _ in range(3):
            miner = RawMiner(mining_server, token)
            await miner.connect()
            await asyncio.wait_for(miner.jobs.get(), 15)
            await miner.close()

    asyncio.run(vanish_three_times())
    wait_for(lambda: market.store.get_repetitions(order.id, [1])[0].state.value == "failed", 15,
             "the repetition to fail")
    assert market.balance(customer) == 1 and market.escrow(order) == 0, "the customer got the coin back"
    assert market.store.get_repetitions(order.id, [1])[0].attempts == 3
