"""Bad input gets a 4xx with a clear message; nothing is stored and no coin moves."""

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from core import security
from core.settings import Settings
from tests.helpers import PASSWORD, ApiClient, interval_order

LONG = "https://example.com/" + "a" * 3000
SOON = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()


def cron(expr: str, tz: str = "UTC") -> dict:
    return {"url": "https://example.com/", "schedule": {"kind": "cron", "cron": expr, "timezone": tz}, "max_runs": 3}


# (case, order JSON, expected status, words the message must contain)
BAD_ORDERS: list[tuple[str, object, int, str]] = [
    ("ftp scheme", interval_order(url="ftp://example.com/f"), 422, "scheme 'ftp' is not allowed"),
    ("javascript url", interval_order(url="javascript:alert(1)"), 422, "not allowed"),
    ("userinfo", interval_order(url="http://user:pw@example.com/"), 422, "user name or password"),
    ("loopback dotted", interval_order(url="http://127.0.0.1/"), 422, "loopback"),
    ("loopback decimal", interval_order(url="http://2130706433/"), 422, "loopback"),
    ("loopback octal", interval_order(url="http://0177.0.0.1/"), 422, "loopback"),
    ("loopback hex", interval_order(url="http://0x7f.0.0.1/"), 422, "loopback"),
    ("loopback short", interval_order(url="http://127.1/"), 422, "loopback"),
    ("loopback percent-encoded", interval_order(url="http://%31%32%37.0.0.1/"), 422, "loopback"),
    ("ipv6 loopback", interval_order(url="http://[::1]/"), 422, "loopback"),
    ("ipv4-mapped ipv6", interval_order(url="http://[::ffff:127.0.0.1]/"), 422, "loopback"),
    ("nat64 of private", interval_order(url="http://[64:ff9b::a00:1]/"), 422, "private"),
    ("metadata link-local", interval_order(url="http://169.254.169.254/latest/"), 422, "link-local"),
    ("private 10/8", interval_order(url="http://10.1.2.3/"), 422, "private"),
    ("private 192.168", interval_order(url="http://192.168.0.1:8080/"), 422, "private"),
    ("carrier-grade nat", interval_order(url="http://100.64.0.1/"), 422, "not a public address"),
    ("ipv6 link-local", interval_order(url="http://[fe80::1]/"), 422, "link-local"),
    ("multicast", interval_order(url="http://224.0.0.1/"), 422, "multicast"),
    ("unspecified", interval_order(url="http://0.0.0.0/"), 422, "unspecified"),
    ("localhost name", interval_order(url="http://localhost:8080/"), 422, "loopback name"),
    ("not a url", interval_order(url="not a url"), 422, "not a valid absolute URL"),
    ("url too long", interval_order(url=LONG), 422, "longer than 2048"),
    ("interval zero", interval_order(every=0), 422, "every_seconds"),
    ("interval negative", interval_order(every=-5), 422, "every_seconds"),
    ("interval huge", interval_order(every=10**9), 422, "every_seconds must be between"),
    ("cron bad minute", cron("61 * * * *"), 422, "cron field minute is 61: it must be between 0 and 59"),
    ("cron bad hour", cron("0 24 * * *"), 422, "cron field hour is 24: it must be between 0 and 23"),
    ("cron bad month range", cron("0 9 * 1-13 *"), 422, "cron field month is 13: it must be between 1 and 12"),
    ("cron not a field", cron("0 9 * * mon%"), 422, "cron field day-of-week ('mon%') is not a number"),
    ("cron four fields", cron("* * * *"), 422, "schedule"),
    ("cron never fires", cron("0 0 31 2 *"), 422, "never fires"),
    ("bad timezone", cron("0 9 * * *", "Mars/Olympus"), 422, "unknown timezone"),
    ("path-like timezone", cron("0 9 * * *", "../../etc/passwd"), 422, "unknown timezone"),
    ("max_runs zero", interval_order(runs=0), 422, "max_runs"),
    ("max_runs over cap", interval_order(runs=10_001), 422, "max_runs must be at most 10000"),
    ("start far in the past", interval_order(start_at="2000-01-01T00:00:00Z"), 422, "in the past"),
    ("start without timezone", interval_order(start_at="2030-01-01T00:00:00"), 422, "needs a timezone"),
    ("start too far ahead", interval_order(start_at="2100-01-01T00:00:00Z"), 422, "days ahead"),
    ("start as a number", interval_order(start_at=1234567890), 422, "start_at"),
    ("start not a date", interval_order(start_at="next tuesday"), 422, "ISO 8601"),
    ("too many headers", interval_order(headers={f"X-H{i}": "v" for i in range(21)}), 422, "at most 20 headers"),
    ("host header", interval_order(headers={"Host": "evil.example"}), 422, "set by the fetcher"),
    ("header injection", interval_order(headers={"X-A": "v\r\nX-B: w"}), 422, "line break"),
    ("bad header name", interval_order(headers={"Bad Name": "v"}), 422, "not a valid HTTP header name"),
    ("oversize headers", interval_order(headers={"X-Big": "v" * 9000}), 422, "larger than 8192"),
    ("body with GET", interval_order(body="x=1"), 422, "only with method POST"),
    ("oversize body", interval_order(method="POST", body="x" * 70_000), 422, "larger than 65536"),
    ("method DELETE", interval_order(method="DELETE"), 422, "method"),
    ("max_runs as string", interval_order(runs="5"), 422, "max_runs"),
    ("max_runs as float", interval_order(runs=2.5), 422, "max_runs"),
    ("url as number", interval_order(url=123), 422, "url"),
    ("schedule as string", {"url": "https://example.com/", "schedule": "every minute", "max_runs": 2}, 422,
     "schedule"),
    ("unknown schedule kind", {"url": "https://example.com/", "schedule": {"kind": "weekly"}, "max_runs": 2}, 422,
     "schedule"),
    ("unknown field", interval_order(priority="high"), 422, "priority"),
    ("missing schedule", {"url": "https://example.com/", "max_runs": 2}, 422, "schedule"),
    ("body not an object", [1, 2, 3], 422, "request"),
]


def test_bad_orders_are_refused_and_change_nothing(api: ApiClient) -> None:
    alice = api.new_account(coins=50)
    problems = []
    for case, body, status, words in BAD_ORDERS:
        r = api.post("/orders", json=body, headers=alice.headers)
        detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
        if r.status_code != status or not isinstance(detail, str) or words not in detail:
            problems.append(f"{case}: {r.status_code} {r.text[:200]}")
    assert not problems, "\n".join(problems)
    assert api.get("/orders", headers=alice.headers).json()["items"] == []
    assert api.balance(alice) == 50
    assert len(BAD_ORDERS) >= 25


def test_malformed_and_oversized_requests(api: ApiClient, api_settings: Settings) -> None:
    alice = api.new_account(coins=50)
    r = api.post("/orders", content=b'{"url": "https://example.com/", ', headers={**alice.headers,
                                                                                 "content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    huge = {"url": "https://example.com/", "schedule": {"kind": "interval", "every_seconds": 60}, "max_runs": 1,
            "method": "POST", "body": "x" * (api_settings.max_request_bytes + 10)}
    r = api.post("/orders", json=huge, headers=alice.headers)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(40):
            yield b"x" * 10_000

    r = api.post("/orders", content=chunks(), headers={**alice.headers, "content-type": "application/json"})
    assert r.status_code == 413
    r = api.get("/orders", params={"limit": 0}, headers=alice.headers)
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    r = api.get("/orders", params={"cursor": "!!garbage!!"}, headers=alice.headers)
    assert r.status_code == 422 and "invalid cursor" in r.json()["detail"]
    r = api.post("/wallet/faucet", json={"amount": 10**6}, headers=alice.headers)
    assert r.status_code == 422 and "at most" in r.json()["detail"]
    r = api.post("/wallet/faucet", json={"amount": 5}, headers={**alice.headers, "Idempotency-Key": "x" * 200})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]
    assert api.get("/orders", headers=alice.headers).json()["items"] == []
    assert api.balance(alice) == 50


@pytest.mark.parametrize("auth", ["none", "garbage", "expired"])
def test_order_without_valid_session_is_refused(api: ApiClient, api_settings: Settings, auth: str) -> None:
    alice = api.new_account(coins=10)
    headers = {
        "none": {},
        "garbage": {"Authorization": "Bearer not.a.token"},
        "expired": {"Authorization": "Bearer " + security.encode_session(
            api_settings, alice.id, "s", datetime.now(UTC) - timedelta(minutes=1))},
    }[auth]
    r = api.post("/orders", json=interval_order(runs=2), headers=headers)
    assert r.status_code == 401 and r.json()["detail"]
    assert api.get("/orders", headers=alice.headers).json()["items"] == []
    assert api.balance(alice) == 10


def test_private_targets_can_be_allowed_for_local_testing(tmp_path, store_url, valkey_url, redis) -> None:
    from api.app import create_app
    from tests.conftest import ThreadedServer, make_settings

    settings = make_settings(tmp_path, store_url, valkey_url, allow_private_targets=True)
    with ThreadedServer(create_app(settings)) as server, ApiClient(server.url) as api:
        alice = api.new_account(coins=5)
        r = api.post("/orders", json=interval_order(url="http://127.0.0.1:8080/page", runs=1, start_at=SOON),
                     headers=alice.headers)
        assert r.status_code == 201, r.text
        r = api.post("/orders", json=interval_order(url="ftp://127.0.0.1/"), headers=alice.headers)
        assert r.status_code == 422


def _post_json(api: ApiClient, path: str, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    """JSON as any client may write it: json.dumps escapes a lone surrogate as \\ud800 (httpx's own
    encoder would refuse to send it)."""
    return api.post(path, content=json.dumps(body).encode(), headers={**(headers or {}),
                                                                      "content-type": "application/json"})


def _problems(answers: dict[str, tuple[httpx.Response, str]]) -> list[str]:
    problems = []
    for case, (r, words) in answers.items():
        detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else None
        if r.status_code != 422 or not isinstance(detail, str) or words not in detail:
            problems.append(f"{case}: {r.status_code} {r.text[:300]}")
    return problems


def test_lone_surrogates_are_refused_everywhere(api: ApiClient) -> None:
    alice = api.new_account(coins=50)
    bad = "x\ud800y"
    unicode = "must be valid Unicode text"
    orders = {
        "header value": interval_order(headers={"X-Key": bad}),
        "header name": interval_order(headers={bad: "v"}),
        "body": interval_order(method="POST", body=bad),
        "url": interval_order(url=f"https://example.com/{bad}"),
        "cron": cron(f"0 9 * * * {bad}"),
        "timezone": cron("0 9 * * *", tz=bad),
    }
    answers = {f"order {case}": (_post_json(api, "/orders", body, alice.headers), unicode)
               for case, body in orders.items()}
    account_calls = {
        "register username": ("/auth/register", {"username": bad, "password": PASSWORD}),
        "register password": ("/auth/register", {"username": "surro", "password": f"pelican ladder {bad}"}),
        "login username": ("/auth/login", {"username": bad, "password": PASSWORD, "code": "123456"}),
        "login password": ("/auth/login", {"username": alice.username, "password": bad, "code": "123456"}),
        "totp setup password": ("/auth/totp/setup", {"username": alice.username, "password": bad}),
        "totp confirm username": ("/auth/totp/confirm", {"username": bad, "password": PASSWORD, "code": "123456"}),
    }
    answers |= {case: (_post_json(api, path, body), unicode) for case, (path, body) in account_calls.items()}
    answers["token name"] = (_post_json(api, "/tokens", {"name": bad, "scopes": ["mine"]}, alice.headers), unicode)
    answers["token order"] = (_post_json(api, "/tokens", {"scopes": ["results"], "order_id": bad}, alice.headers),
                              unicode)
    assert not _problems(answers), "\n".join(_problems(answers))
    assert "headers.X-Key must be valid Unicode text" in answers["order header value"][0].json()["detail"]
    assert api.get("/orders", headers=alice.headers).json()["items"] == []
    assert api.get("/tokens", headers=alice.headers).json() == []
    assert api.balance(alice) == 50


def test_control_characters_in_names_are_refused(api: ApiClient) -> None:
    alice = api.new_account(coins=50)
    control = "must not contain control characters"
    answers = {
        f"token name {name!r}": (api.post("/tokens", json={"name": name, "scopes": ["mine"]}, headers=alice.headers),
                                 control)
        for name in ("mi\x00ner", "line\nbreak", "tab\there", "esc\x1b[31m", "del\x7f", "c1\x85")
    }
    answers["token order id"] = (api.post("/tokens", json={"scopes": ["results"], "order_id": "o\x00"},
                                          headers=alice.headers), control)
    answers["login username"] = (api.post("/auth/login", json={"username": "bo\x00b", "password": PASSWORD,
                                                               "code": "123456"}), control)
    answers["cron"] = (api.post("/orders", json=cron("0 9 * * *\x00"), headers=alice.headers), control)
    answers["timezone"] = (api.post("/orders", json=cron("0 9 * * *", tz="UTC\x00"), headers=alice.headers), control)
    answers["header value"] = (api.post("/orders", json=interval_order(headers={"X-A": "v\x01"}),
                                        headers=alice.headers), "control character")
    answers["body"] = (api.post("/orders", json=interval_order(method="POST", body="a=\x00"), headers=alice.headers),
                       "NUL")
    answers["url"] = (api.post("/orders", json=interval_order(url="https://example.com/\x00"), headers=alice.headers),
                      "control characters")
    assert not _problems(answers), "\n".join(_problems(answers))
    for path in ("/orders/%00", "/orders/x%00y/results", "/tokens/%00"):
        r = api.get(path, headers=alice.headers) if "tokens" not in path else api.delete(path, headers=alice.headers)
        assert r.status_code == 404, (path, r.status_code, r.text)
    r = api.get("/orders", params={"cursor": "\x00"}, headers=alice.headers)
    assert r.status_code == 422, r.text
    assert api.get("/tokens", headers=alice.headers).json() == []
    assert api.get("/orders", headers=alice.headers).json()["items"] == []
    assert api.balance(alice) == 50


@pytest.mark.parametrize(("cron", "status", "message"), [
    ("61 * * * *", 422, "cron field minute is 61: it must be between 0 and 59"),
    ("0 9 31 2 *", 422, "never fires"),
])
def test_the_cron_preview_names_what_is_wrong(api, cron: str, status: int, message: str) -> None:
    r = api.get("/schedules/cron-preview", params={"cron": cron})
    assert r.status_code == status and message in r.json()["detail"]


def test_the_cron_preview_lists_the_next_runs(api) -> None:
    r = api.get("/schedules/cron-preview", params={"cron": "30 9 * * 1-5", "timezone": "Europe/Berlin", "count": 3})
    assert r.status_code == 200
    runs = [datetime.fromisoformat(t) for t in r.json()["next_runs"]]
    assert len(runs) == 3 and runs == sorted(runs)
    assert all((t.hour, t.minute, t.utcoffset() is not None) == (9, 30, True) and t.weekday() < 5 for t in runs)
