"""Checking results against each other: when two fetches agree, what the votes decide, how reputations move."""

import random
from datetime import UTC, datetime

from core.agreement import Comparer
from core.client_address import network_of
from core.schemas import Validation
from core.settings import Settings
from core.storage.records import Result
from core.trust import Reputation, Standing
from core.validation import Vote, tally
from tests.pages import FAKE_PAGE, altered, article

SETTINGS = Settings(mode="test")
COMPARER = Comparer(SETTINGS.agreement_threshold, SETTINGS.disagreement_threshold)


def fetch(miner: str, body: str | bytes, status: int = 200, url: str = "https://news.example/a/1",
          ctype: str = "text/html; charset=utf-8", error: str | None = None, cap: int = 1 << 20) -> Result:
    now = datetime.now(UTC)
    raw = body.encode() if isinstance(body, str) else body
    return Result.with_body(raw, cap, job_key="o:1", order_id="o", n=1, miner_id=miner, fetched_at=now,
                            status=None if error else status, final_url=url, headers={"Content-Type": ctype},
                            error=error, stored_at=now)


def honest(miner: str, page: int = 3) -> Result:
    return fetch(miner, article(page, random.Random()))


def test_two_honest_fetches_of_a_changing_page_agree_and_made_up_ones_clearly_differ() -> None:
    a, b = honest("a"), honest("b")
    assert a.sha256 != b.sha256, "the page changes on every fetch"
    assert COMPARER.agree(a, b)
    assert COMPARER.differ(a, fetch("c", FAKE_PAGE))
    assert COMPARER.differ(a, fetch("c", altered(3, random.Random(), share=0.5)))
    assert not COMPARER.agree(a, fetch("c", altered(3, random.Random(), share=0.3)))


def test_status_final_url_media_type_and_errors_must_match() -> None:
    page = article(3, random.Random(1))
    a = fetch("a", page)
    assert not COMPARER.agree(a, fetch("b", page, status=503))
    assert not COMPARER.agree(a, fetch("b", page, url="https://news.example/login"))
    assert not COMPARER.agree(a, fetch("b", page, ctype="application/json"))
    assert COMPARER.agree(a, fetch("b", page, url="https://news.example/a/1#top")), "a fragment is not a page"
    assert COMPARER.agree(fetch("a", b"", error="robots_disallowed"), fetch("b", b"", error="robots_disallowed"))
    assert not COMPARER.agree(a, fetch("b", b"", error="robots_disallowed"))


def test_binary_bodies_must_be_equal_and_a_cut_body_is_compared_over_what_both_kept() -> None:
    png = bytes(range(256)) * 40
    assert COMPARER.agree(fetch("a", png, ctype="image/png"), fetch("b", png, ctype="image/png"))
    assert not COMPARER.agree(fetch("a", png, ctype="image/png"), fetch("b", png[::-1], ctype="image/png"))
    page = article(3, random.Random(1))
    assert COMPARER.agree(fetch("a", page, cap=4096), fetch("b", page))


def test_two_agreeing_fetches_validate_the_first() -> None:
    a, b = Vote(honest("a")), Vote(honest("b"))
    assert not tally([a], COMPARER, closing=False).final, "one fetch waits for its check"
    verdict = tally([a, b], COMPARER, closing=False)
    assert verdict.delivered is not None and verdict.delivered.miner_id == "a"
    assert verdict.delivered.validation is Validation.validated and verdict.delivered.checked_by == ["b"]
    assert verdict.agreed == ["a", "b"] and verdict.outvoted == []


def test_a_third_fetch_outvotes_a_false_page_which_forfeits_the_pay() -> None:
    fake, b, c = Vote(fetch("cheat", FAKE_PAGE)), Vote(honest("b")), Vote(honest("c"))
    assert not tally([fake, b], COMPARER, closing=False).final, "two that disagree call a third"
    verdict = tally([fake, b, c], COMPARER, closing=True)
    assert verdict.delivered is not None and verdict.delivered.miner_id == "b", "the honest page is delivered"
    assert verdict.delivered.validation is Validation.validated and verdict.delivered.checked_by == ["c"]
    assert verdict.agreed == ["b", "c"] and verdict.outvoted == ["cheat"]


def test_a_page_only_somewhat_different_loses_without_a_strike_and_no_majority_is_disputed() -> None:
    edited = Vote(fetch("e", altered(3, random.Random(2), share=0.3)))
    verdict = tally([edited, Vote(honest("b")), Vote(honest("c"))], COMPARER, closing=True)
    assert verdict.delivered is not None and verdict.delivered.miner_id == "b"
    assert verdict.outvoted == [], "not clearly different: not paid, not struck"
    pages = [Vote(fetch(m, article(p, random.Random()))) for m, p in (("a", 1), ("b", 2), ("c", 4))]
    scores = {"a": 0.5, "b": 0.95, "c": 0.7}
    disputed = tally(pages, COMPARER, closing=True, standing=scores.__getitem__)
    assert disputed.delivered is not None and disputed.delivered.validation is Validation.disputed
    assert disputed.delivered.miner_id == "b", "the most reputable miner's fetch"
    assert sorted(disputed.delivered.checked_by) == ["a", "c"] and disputed.outvoted == disputed.agreed == []
    alone = tally([Vote(honest("a"))], COMPARER, closing=True)
    assert alone.delivered is not None and alone.delivered.validation is Validation.unchecked


def test_reputation_earns_trust_after_a_run_of_agreeing_checks_and_two_strikes_bar() -> None:
    rep = Reputation()
    assert rep.standing(SETTINGS) is Standing.new and rep.check_share(SETTINGS) == 1.0
    assert rep.capacity(16, SETTINGS) == SETTINGS.untrusted_capacity
    for _ in range(SETTINGS.trust_after):
        rep = rep.after(True, SETTINGS)
    assert rep.standing(SETTINGS) is Standing.trusted and rep.check_share(SETTINGS) == SETTINGS.check_share_trusted
    assert rep.capacity(16, SETTINGS) == 16
    rep = rep.after(False, SETTINGS)
    assert rep.standing(SETTINGS) is Standing.suspect and rep.streak == 0 and rep.check_share(SETTINGS) == 1.0
    rep = rep.after(False, SETTINGS)
    assert rep.standing(SETTINGS) is Standing.barred and rep.barred_at is not None
    assert rep.capacity(16, SETTINGS) == 0 and rep.check_share(SETTINGS) == 0.0


def test_a_miner_s_network_is_told_only_for_public_addresses() -> None:
    assert network_of("93.184.216.34") == network_of("93.184.216.200") == "93.184.216.0/24"
    assert network_of("2001:db8:1:2::1") is None, "documentation range: not global"
    assert network_of("2a00:1450:4001:81a::200e") == "2a00:1450:4001::/48"
    assert network_of("127.0.0.1") is None and network_of("10.1.2.3") is None and network_of("junk") is None
