"""No job is lost when a miner or a mining server dies, and none is paid twice."""

import signal

from redis import Redis

from core import ledger
from core.protocol.jobs import JOBS_STREAM
from miners.server.stream import GROUP
from tests.miners.server.conftest import Market, PageServer, Processes, pending_of, wait_for


def test_a_killed_miner_s_job_is_completed_by_another_and_paid_once(market: Market, mining_server: str,
                                                                      pages: PageServer,
                                                                      processes: Processes) -> None:
    customer = market.user(coins=1)
    first, first_token = market.miner()
    second, second_token = market.miner()
    order = market.order(customer, pages.url("/hold/a"), runs=1)
    holder = processes.miner(mining_server, first_token, "--concurrency", "1")
    wait_for(lambda: pages.hits("/hold/a") == 1, 30, "the first miner to fetch the page")
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=10)
    processes.miner(mining_server, second_token, "--concurrency", "1")
    wait_for(lambda: market.stored(order) == [1], 30, "the second miner's result")
    pages.release("a")
    result = market.store.get_result(f"{order.id}:1")
    assert result is not None and result.miner_id == second.id and result.body == b"held a"
    assert market.balance(second) == 1 and market.balance(first) == 0
    assert market.escrow(order) == 0 and market.balance(customer) == 0
    [rep] = market.store.get_repetitions(order.id, [1])
    assert rep.state.value == "done" and rep.attempts == 1, "the killed miner's lease counted as one attempt"


def test_two_servers_one_killed_mid_run_lose_nothing_and_pay_once(market: Market, pages: PageServer,
                                                                  processes: Processes, redis: Redis) -> None:
    runs = 240
    customer = market.user(coins=runs)
    doomed, survivor = processes.server(), processes.server()
    miners = [market.miner() for _ in range(4)]
    for (_, token), server in zip(miners, (doomed, doomed, survivor, survivor), strict=True):
        processes.miner(server.url, token, "--concurrency", "6")
    order = market.order(customer, pages.url("/page/slow?delay=0.05"), runs=runs)
    wait_for(lambda: len(market.stored(order)) >= 40 and pending_of(redis, doomed.server_id) > 0, 60,
             "both servers to be mid-run")
    doomed.kill()
    held_when_killed = pending_of(redis, doomed.server_id)
    assert held_when_killed > 0
    wait_for(lambda: len(market.stored(order)) == runs, 120, f"all {runs} results")
    assert market.stored(order) == list(range(1, runs + 1)), "every repetition stored exactly once"
    assert market.states(order) == {"done": runs}
    earned = [market.balance(user) for user, _ in miners]
    assert sum(earned) == runs, "paid once per repetition"
    assert earned[2] > 0 and earned[3] > 0
    rewards = [market.store.get_transfer(ledger.reward_key(f"{order.id}:{n}")) for n in range(1, runs + 1)]
    assert all(r is not None and r.amount == 1 for r in rewards)
    assert market.escrow(order) == 0 and market.balance(customer) == 0
    assert market.balance(customer) + market.escrow(order) + sum(earned) == market.granted, "coins conserved"
    wait_for(lambda: redis.xpending(JOBS_STREAM, GROUP)["pending"] == 0, 30, "the stream to be fully acknowledged")
