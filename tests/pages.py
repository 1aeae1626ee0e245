"""Real-looking pages that change a little on every fetch, and the pages cheating miners make of them.

`article(page, fetch)` is a news article as sites serve it: a stable headline and body (from the
page number), and around it what differs from one fetch to the next — the time, a reader count,
a rotating ad, three teasers of twenty, a shuffled "trending" list, a comment count, a CSRF token
and a script nonce. Two honest fetches of one page share the article and differ in those parts.

`altered(page, fetch, share)` is the same fetch with `share` of the article's paragraphs replaced
by made-up ones; `FAKE_PAGE` is a made-up page a miner returns without fetching anything.
"""

import random

WORDS = (
    "the city council water plan budget school river bridge market price energy report police court "
    "family health hospital doctor nurse station train road traffic weather storm rain summer winter "
    "festival music theatre museum library park garden team match season player coach goal league "
    "company worker union factory office bank loan rate tax vote election party minister mayor law "
    "study research scientist climate forest farm crop harvest food restaurant shop street house rent "
    "building project plan million year week month morning evening night local national public private "
    "new old first last more less many few large small high low long short early late open closed "
    "said says told asked announced expected reported confirmed decided planned started finished "
    "will would could should may might must can did does has have had was were is are be been "
    "and or but because while after before during since until about over under between against "
    "children parents students teachers residents visitors drivers owners voters members officials"
).split()
AD_LINES = [f"Sponsored: {w} deals up to {p}% off this week only" for w, p in
            zip(("shoe", "phone", "travel", "laptop", "garden", "coffee", "insurance", "bike"),
                (20, 35, 40, 15, 25, 50, 10, 30), strict=True)]
TEASERS = [f"Read next: {a} {b} {c} after {d} {e}" for a, b, c, d, e in
           zip(*(random.Random(s).sample(WORDS, 20) for s in range(5)), strict=True)]
FAKE_PAGE = ("<html><head><title>News</title></head><body><h1>Everything is fine</h1>"
             "<p>Nothing happened today. Come back tomorrow.</p></body></html>")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 18))]
    return " ".join(words).capitalize() + "."


def _paragraphs(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(_sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(count)]


def _render(page: int, paragraphs: list[str], fetch: random.Random) -> str:
    title = " ".join(random.Random(page).sample(WORDS, 7)).capitalize()
    stamp = f"2026-11-{fetch.randint(1, 28):02d} {fetch.randint(0, 23):02d}:{fetch.randint(0, 59):02d}"
    teasers = "".join(f"<li><a href='/a/{fetch.randint(1, 9999)}'>{t}</a></li>" for t in fetch.sample(TEASERS, 3))
    trending = fetch.sample(WORDS, 6)
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        f"<!doctype html><html><head><title>{title}</title>"
        f"<meta name='csrf-token' content='{fetch.getrandbits(128):032x}'>"
        f"<script nonce='{fetch.getrandbits(64):016x}'>window.__state = {{views: {fetch.randint(1, 10**6)}}};</script>"
        "<style>body { font-family: serif }</style></head><body>"
        f"<header><nav><a href='/'>Home</a> <a href='/local'>Local</a> <a href='/sport'>Sport</a></nav>"
        f"<p class='updated'>Updated {stamp} · {fetch.randint(2, 900)} people reading now</p></header>"
        f"<aside class='ad'>{fetch.choice(AD_LINES)}</aside>"
        f"<article><h1>{title}</h1>{body}</article>"
        f"<section class='comments'>{fetch.randint(0, 400)} comments</section>"
        f"<aside><h2>Trending</h2><ol>{''.join(f'<li>{w}</li>' for w in trending)}</ol></aside>"
        f"<aside><h2>More</h2><ul>{teasers}</ul></aside>"
        f"<form><input type='hidden' name='token' value='{fetch.getrandbits(64):x}'></form>"
        "<footer>© 2026 The Daily Example</footer></body></html>"
    )


def article(page: int, fetch: random.Random) -> str:
    """Page `page` as one fetch sees it; `fetch` draws what changes between fetches."""
    count = 6 + page % 5
    return _render(page, _paragraphs(page, count), fetch)


def altered(page: int, fetch: random.Random, share: float) -> str:
    """The fetch with `share` of the article's paragraphs replaced by made-up ones (at least one)."""
    count = 6 + page % 5
    paragraphs = _paragraphs(page, count)
    made_up = _paragraphs(10**6 + fetch.getrandbits(32), count)
    for i in fetch.sample(range(count), max(1, round(share * count))):
        paragraphs[i] = made_up[i]
    return _render(page, paragraphs, fetch)


def genuine(page: int, text: str) -> bool:
    """Whether `text` (a fetched page, or its visible text) holds every paragraph of the article: not made up."""
    return all(p in text for p in _paragraphs(page, 6 + page % 5))
