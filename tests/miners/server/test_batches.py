"""Batches on the `/mine` namespace: a miner that asks for them gets the jobs of a hand-out pass in one
`jobs` message and may answer with one `results` message. Each result in a batch is judged, stored and
paid as it would be alone; a bad one is refused without holding up the others; a malformed batch changes
nothing. A miner that does not ask keeps getting one `job` per message."""

import asyncio
from typing import Any

from core.protocol.mining import NAMESPACE, MinerEvent, MinerPolicy, ServerEvent, batch_of_results
from tests.miners.server.conftest import Market, PageServer
from tests.miners.server.test_bad_input import RawMiner, result_for


class BatchMiner(RawMiner):
    """A hand-driven miner that connects asking for batches and records how its jobs came."""

    def __init__(self, url: str, token: str, batches: bool = True) -> None:
        super().__init__(url, token)
        self.batches = batches
        self.messages: list[int] = []  # offers per message, in the order they came
        self.sio.on(ServerEvent.jobs, self._jobs, namespace=NAMESPACE)
        self.sio.on(ServerEvent.job, self._job, namespace=NAMESPACE)

    async def _job(self, offer: dict) -> None:
        self.messages.append(1)
        await self.jobs.put(offer)

    async def _jobs(self, data: dict) -> None:
        self.messages.append(len(data["jobs"]))
        for offer in data["jobs"]:
            await self.jobs.put(offer)

    async def connect(self, policy: dict | None = None) -> dict:
        await self.sio.connect(self.url, auth={"token": self.token, "batches": self.batches}, namespaces=[NAMESPACE],
                               transports=["websocket"], wait_timeout=10)
        return await self.call(MinerEvent.hello, policy or MinerPolicy(capacity=8).model_dump())

    async def take(self, count: int) -> list[dict]:
        return [await asyncio.wait_for(self.jobs.get(), 15) for _ in range(count)]


def test_jobs_come_together_and_a_batch_of_results_is_stored_and_paid_each_as_its_own(
        market: Market, mining_server: str, pages: PageServer) -> None:
    runs = 6
    customer = market.user(coins=runs)
    miner_user, token = market.miner()
    order = market.order(customer, pages.url("/page/batch"), runs=runs)

    async def mine() -> tuple[dict, list[int], dict, dict[str, bytes]]:
        miner = BatchMiner(mining_server, token)
        welcome = await miner.connect()
        offers = await miner.take(runs)
        bodies = {o["key"]: f"page {o['key']} ".encode() * (10 + len(o["key"]) % 7) for o in offers}
        answer = await miner.call(MinerEvent.results, batch_of_results(
            [result_for(o["key"], final_url=o["url"], body=bodies[o["key"]]) for o in offers]))
        await miner.close()
        return welcome, miner.messages, answer, bodies

    welcome, messages, answer, bodies = asyncio.run(mine())
    assert welcome["batches"] is True
    assert sum(messages) == runs and max(messages) > 1, f"the jobs came one per message: {messages}"
    assert [a["ok"] for a in answer["acks"]] == [True] * runs
    assert [a["outcome"] for a in answer["acks"]] == ["paid"] * runs
    stored = {r.job_key: r.body for r in market.store.list_results(order.id)}
    assert stored == bodies, "each body is cut back out of the joined attachment whole"
    assert market.balance(miner_user) == runs and market.escrow(order) == 0


def test_a_miner_that_does_not_ask_for_batches_gets_one_job_per_message(market: Market, mining_server: str,
                                                                        pages: PageServer) -> None:
    runs = 6
    customer = market.user(coins=runs)
    miner_user, token = market.miner()
    order = market.order(customer, pages.url("/page/single"), runs=runs)

    async def mine() -> list[int]:
        miner = BatchMiner(mining_server, token, batches=False)
        await miner.connect()
        for offer in await miner.take(runs):
            ack = await miner.call(MinerEvent.result, result_for(offer["key"], final_url=offer["url"]))
            assert ack["ok"] and ack["outcome"] == "paid", ack
        await miner.close()
        return miner.messages

    assert asyncio.run(mine()) == [1] * runs
    assert len(market.stored(order)) == runs and market.balance(miner_user) == runs


def test_bad_batches_are_refused_clearly_and_a_bad_result_spares_the_good_ones(market: Market, mining_server: str,
                                                                               pages: PageServer) -> None:
    customer = market.user(coins=2)
    miner_user, token = market.miner()
    order = market.order(customer, pages.url("/page/mixed"), runs=2)

    async def misbehave() -> tuple[list[Any], dict, list[str]]:
        miner = BatchMiner(mining_server, token)
        await miner.connect(MinerPolicy(capacity=3, max_body_bytes=4096).model_dump())
        first, second = await miner.take(2)
        good = result_for(first["key"], final_url=first["url"], body=b"the page")
        refusals = [
            await miner.call(MinerEvent.results, [good]),
            await miner.call(MinerEvent.results, {"results": [good]}),
            await miner.call(MinerEvent.results, {"results": [], "bodies": b""}),
            await miner.call(MinerEvent.results, batch_of_results([good] * 4)),  # more than it may hold
            await miner.call(MinerEvent.results, {"results": [{**good, "body_bytes": 8}], "bodies": "the page"}),
            await miner.call(MinerEvent.results, {"results": [{**good, "body_bytes": -1}], "bodies": b"the page"}),
            await miner.call(MinerEvent.results, {"results": [{**good, "body_bytes": 3}], "bodies": b"the page"}),
            await miner.call(MinerEvent.results, {"results": ["not an object"], "bodies": b""}),
        ]
        mixed = await miner.call(MinerEvent.results, batch_of_results([
            result_for(second["key"], final_url=second["url"], status="200"),  # malformed
            good,
            result_for(f"{order.id}:99"),  # not leased to it
        ]))
        await miner.close()
        return refusals, mixed, miner.problems

    refusals, mixed, problems = asyncio.run(misbehave())
    errors = [r["error"] for r in refusals]
    assert all(r["ok"] is False for r in refusals)
    assert errors[0].startswith("malformed results: results takes an object with exactly 'results'")
    assert errors[1] == errors[0]
    assert errors[2].startswith("malformed results: results must be a list of 1 to 3 results")
    assert errors[3] == errors[2]
    assert errors[4] == "malformed results: bodies must be binary (the bodies joined), not str"
    assert errors[5].startswith("malformed results: results.0.body_bytes must be the length of its body")
    assert errors[6] == "malformed results: the body_bytes of the results add up to 3 bytes but bodies holds 8"
    assert errors[7].startswith("malformed results: results.0.body_bytes")
    assert problems[:len(errors)] == errors, "each refusal is also sent as a `problem` event"
    acks = mixed["acks"]
    assert [a["ok"] for a in acks] == [False, True, False]
    assert acks[0]["error"].startswith("malformed result: status")
    assert acks[1]["outcome"] == "paid" and acks[1]["coins"] == 1
    assert "is not leased to this connection" in acks[2]["error"]
    assert [r.body for r in market.store.list_results(order.id)] == [b"the page"]
    assert market.balance(miner_user) == 1 and market.escrow(order) == 1
