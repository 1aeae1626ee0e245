"""Answers that carry a secret are never cached; no answer may be sniffed into another content type."""

import time

import pyotp

from tests.helpers import PASSWORD, ApiClient, fresh_totp_step, interval_order


def test_secrets_are_not_cached_and_nothing_is_sniffed(api: ApiClient) -> None:
    r, username = api.register()
    secret_answers = {"register": r}
    secret_answers["totp setup"] = api.post("/auth/totp/setup", json={"username": username, "password": PASSWORD})
    totp = pyotp.TOTP(secret_answers["totp setup"].json()["secret"])
    fresh_totp_step()
    secret_answers["totp confirm"] = api.post("/auth/totp/confirm", json={
        "username": username, "password": PASSWORD, "code": totp.at(time.time() - 30)})
    secret_answers["login"] = api.post("/auth/login", json={"username": username, "password": PASSWORD,
                                                            "code": totp.now()})
    auth = {"Authorization": f"Bearer {secret_answers['login'].json()['access_token']}"}
    secret_answers["token creation"] = api.post("/tokens", json={"name": "miner", "scopes": ["mine"]}, headers=auth)
    for what, answer in secret_answers.items():
        assert answer.status_code in (200, 201), (what, answer.text)
        assert answer.headers.get("cache-control") == "no-store", what
        assert answer.headers.get("x-content-type-options") == "nosniff", what

    others = {
        "me": api.get("/me", headers=auth),
        "orders": api.get("/orders", headers=auth),
        "a refused order": api.post("/orders", json=interval_order(url="ftp://x/"), headers=auth),
        "no session": api.get("/me"),
        "not found": api.get("/no-such-page"),
        "too large": api.post("/orders", content=b"x" * 300_000, headers={**auth, "content-type": "application/json"}),
        "openapi": api.get("/openapi.json"),
    }
    for what, answer in others.items():
        assert answer.headers.get("x-content-type-options") == "nosniff", (what, answer.status_code)
