"""A job travels from the job stream through a mining server to a `crawlcoin mine` process and
back: the result is stored once, the miner is paid from the order's escrow, result servers are told."""

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from core.protocol.notices import NOTICES_STREAM
from tests.miners.server.conftest import Market, PageServer, Processes, wait_for


def test_a_job_reaches_a_miner_whose_result_is_stored_and_paid(market: Market, mining_server: str,
                                                               pages: PageServer, processes: Processes,
                                                               redis: Redis) -> None:
    customer = market.user(coins=5)
    miner, token = market.miner()
    order = market.order(customer, pages.url("/page/one"), runs=1)
    assert market.escrow(order) == 1 and market.balance(customer) == 4
    proc = processes.miner(mining_server, token, "--concurrency", "2")
    wait_for(lambda: market.stored(order) == [1], 30, "the result to be stored")
    result = market.store.get_result(f"{order.id}:1")
    assert result is not None
    assert (result.status, result.body, result.miner_id, result.error) == (200, b"page one", miner.id, None)
    assert result.final_url == pages.url("/page/one") and result.headers["etag"] == '"v1"'
    assert market.balance(miner) == 1, "the miner earned the order's price per run"
    assert market.escrow(order) == 0 and market.balance(customer) == 4
    assert market.states(order) == {"done": 1}
    wait_for(lambda: redis.xlen(NOTICES_STREAM) == 1, 15, "the notice to result servers")  # sent after the commit
    [(_, notice)] = redis.xrange(NOTICES_STREAM)
    assert notice[b"key"] == f"{order.id}:1".encode() and notice[b"order_id"] == order.id.encode()
    assert proc.stop() == 0, proc.output()
    out = proc.output()
    assert "allow-private-targets is ON" in out and "for local testing only" in out
    assert "Traceback" not in out


def test_miners_with_equal_room_take_turns_when_jobs_come_one_at_a_time(market: Market, mining_server: str,
                                                                        pages: PageServer,
                                                                        processes: Processes) -> None:
    """A volunteer who joins a server where another miner already runs gets work too (one job at a time would
    otherwise always go to the miner that connected first)."""
    customer = market.user(coins=6)
    first, first_token = market.miner()
    second, second_token = market.miner()
    processes.miner(mining_server, first_token)
    warm = market.order(customer, pages.url("/page/warm"))
    wait_for(lambda: market.stored(warm) == [1], 30, "the first miner to work")
    processes.miner(mining_server, second_token)
    wait_for(lambda: httpx.get(f"{mining_server}/health", timeout=5).json()["miners"] == 2, 30, "the second miner")
    for i in range(4):
        order = market.order(customer, pages.url(f"/page/turn{i}"))
        wait_for(lambda order=order: market.stored(order) == [1], 30, f"job {i}")
    assert market.balance(first) + market.balance(second) == 5
    assert market.balance(second) >= 2, "the miner that came second got its turns"


def _figures(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.name + str(sorted(s.labels.items()) or ""): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_metrics_count_a_paid_job_and_the_connected_miner(market: Market, mining_server: str, pages: PageServer,
                                                          processes: Processes) -> None:
    before = _figures(mining_server)  # counters are per process: this one runs other tests' servers too
    paid = "crawlcoin_jobs_finished_total[('outcome', 'paid')]"
    customer = market.user(coins=5)
    _, token = market.miner()
    order = market.order(customer, pages.url("/page/one"), runs=2)
    proc = processes.miner(mining_server, token)
    wait_for(lambda: len(market.stored(order)) == 2, 30, "both results to be stored")
    wait_for(lambda: _figures(mining_server).get(paid, 0) - before.get(paid, 0) == 2, 10, "the paid count")
    after = _figures(mining_server)
    assert after["crawlcoin_coins_paid_total"] - before.get("crawlcoin_coins_paid_total", 0) == 2
    assert (after["crawlcoin_store_lateness_seconds_count"]
            - before.get("crawlcoin_store_lateness_seconds_count", 0)) == 2
    assert after["crawlcoin_miners_connected"] == 1 and after["crawlcoin_leases_outstanding"] == 0
    assert proc.stop() == 0, proc.output()
    wait_for(lambda: _figures(mining_server)["crawlcoin_miners_connected"] == 0, 10, "the miner to be gone")
    assert httpx.get(f"{mining_server}/nothing", timeout=10).status_code == 404
