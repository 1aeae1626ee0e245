"""Politeness and safety end to end: the per-domain budget, robots.txt, refused targets."""

import pytest

from tests.miners.server.conftest import Market, PageServer, Processes, wait_for


@pytest.fixture
def mining_overrides() -> dict[str, object]:
    return {"domain_rate_per_second": 2.0}


def test_jobs_for_one_domain_wait_for_its_request_budget(market: Market, mining_server: str, pages: PageServer,
                                                         processes: Processes) -> None:
    customer = market.user(coins=4)
    _, token = market.miner()
    order = market.order(customer, pages.url("/page/polite"), runs=4)
    processes.miner(mining_server, token, "--concurrency", "4")
    wait_for(lambda: len(market.stored(order)) == 4, 30, "4 results")
    times = sorted(t for path, t in pages.requests if path == "/page/polite")
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # The budget is booked when a job is handed out; the request itself comes a little later (the
    # first one after robots.txt), so a gap can shrink by that jitter, never to near 0.
    assert min(gaps) >= 0.35, f"2 requests/s per domain means ~0.5 s between requests, got {gaps}"
    assert times[-1] - times[0] >= 1.35, f"4 requests at 2/s span ≥ 1.5 s, got {gaps}"


def test_a_url_robots_txt_disallows_is_reported_and_refunded_not_paid(market: Market, mining_server: str,
                                                                      pages: PageServer,
                                                                      processes: Processes) -> None:
    pages.robots = "User-agent: *\nDisallow: /page/private\n"
    customer = market.user(coins=2)
    miner, token = market.miner()
    order = market.order(customer, pages.url("/page/private"), runs=1)
    processes.miner(mining_server, token)
    wait_for(lambda: market.stored(order) == [1], 30, "the result")
    result = market.store.get_result(f"{order.id}:1")
    assert result is not None and result.error == "robots_disallowed" and result.status is None
    assert "robots.txt" in (result.error_text or "")
    assert pages.hits("/page/private") == 0, "the page itself was never requested"
    assert market.states(order) == {"refunded": 1}
    assert market.balance(miner) == 0 and market.balance(customer) == 2 and market.escrow(order) == 0


def test_a_refused_target_comes_back_reported_as_refused_and_refunded(market: Market, mining_server: str,
                                                                      pages: PageServer,
                                                                      processes: Processes) -> None:
    customer = market.user(coins=1)
    miner, token = market.miner()
    order = market.order(customer, pages.url("/page/internal"), runs=1)  # 127.0.0.1: a private address
    proc = processes.miner(mining_server, token, private_targets=False)
    wait_for(lambda: market.stored(order) == [1], 30, "the result")
    result = market.store.get_result(f"{order.id}:1")
    assert result is not None and result.error == "refused_target" and "loopback" in (result.error_text or "")
    assert pages.requests == [], "the page server saw no connection at all"
    assert market.states(order) == {"refunded": 1}
    assert market.balance(miner) == 0 and market.balance(customer) == 1
    assert "allow-private-targets" not in proc.output()


def test_a_miner_gets_no_job_for_a_domain_it_blocks(market: Market, mining_server: str, pages: PageServer,
                                                    processes: Processes) -> None:
    customer = market.user(coins=3)
    picky, picky_token = market.miner()
    willing, willing_token = market.miner()
    processes.miner(mining_server, picky_token, "--block-domain", "127.0.0.1", "--concurrency", "4")
    order = market.order(customer, pages.url("/page/blocked"), runs=3)
    processes.miner(mining_server, willing_token, "--concurrency", "1")
    wait_for(lambda: len(market.stored(order)) == 3, 30, "3 results")
    assert {r.miner_id for r in market.store.list_results(order.id)} == {willing.id}
    assert market.balance(willing) == 3 and market.balance(picky) == 0
