"""A job travels from the job stream through a mining server to a `crawlcoin mine` process and
back: the result is stored once, the miner is paid from the order's escrow, result servers are told."""

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
