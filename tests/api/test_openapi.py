"""The OpenAPI document tells a client every answer it can get: each error status, with its schema.

(A path parameter that fails validation is a 422 too, so every operation with parameters lists it.)"""

import pytest

from tests.helpers import ApiClient

ERRORS = {
    ("post", "/auth/register"): {409, 413, 422, 429, 503},
    ("post", "/auth/totp/setup"): {401, 413, 422, 429, 503},
    ("post", "/auth/totp/confirm"): {401, 409, 413, 422, 429, 503},
    ("post", "/auth/login"): {401, 403, 413, 422, 429, 503},
    ("post", "/auth/logout"): {401},
    ("get", "/me"): {401},
    ("post", "/tokens"): {401, 404, 413, 422},
    ("get", "/tokens"): {401},
    ("delete", "/tokens/{token_id}"): {401, 404, 422},
    ("get", "/wallet"): {401},
    ("get", "/wallet/ledger"): {401, 422},
    ("post", "/wallet/faucet"): {401, 404, 409, 413, 422},
    ("post", "/orders"): {401, 402, 409, 413, 422},
    ("get", "/orders"): {401, 422},
    ("get", "/orders/{order_id}"): {401, 404, 422},
    ("post", "/orders/{order_id}/pause"): {401, 404, 409, 422},
    ("post", "/orders/{order_id}/resume"): {401, 404, 409, 422},
    ("post", "/orders/{order_id}/cancel"): {401, 404, 409, 422},
    ("get", "/orders/{order_id}/results"): {401, 404, 422},
    ("get", "/orders/{order_id}/results/{n}/body"): {401, 404, 410, 422},
}


@pytest.fixture
def store_url(tmp_path) -> str:  # the document does not depend on the backend
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_every_operation_lists_its_error_answers_with_the_error_schema(api: ApiClient) -> None:
    doc = api.get("/openapi.json").json()
    operations = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    assert set(ERRORS) <= set(operations)
    for key, codes in ERRORS.items():
        responses = operations[key]["responses"]
        errors = {int(c) for c in responses if int(c) >= 400}
        assert errors == codes, (key, errors)
        for code in codes:
            schema = responses[str(code)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (key, code)
            assert responses[str(code)]["description"] not in ("", "Validation Error"), (key, code)
    error = doc["components"]["schemas"]["ErrorOut"]
    assert set(error["properties"]) == {"detail", "errors"} and error["required"] == ["detail"]
    assert all(p.get("description") for p in error["properties"].values())
    assert "HTTPValidationError" not in doc["components"]["schemas"], "one error schema, also for 422"


def test_summaries_read_as_sentences(api: ApiClient) -> None:
    doc = api.get("/openapi.json").json()
    summaries = {(m, p): op["summary"] for p, item in doc["paths"].items() for m, op in item.items()}
    assert summaries[("post", "/auth/totp/setup")] == \
        "Issue a new TOTP secret for an account whose enrolment is not confirmed yet"
    assert summaries[("post", "/orders")] == "Place an order; its full cost is held in escrow at once"
    assert not [s for s in summaries.values() if s.istitle()], "no summary made from a function name"


def test_every_field_of_every_schema_is_described(api: ApiClient) -> None:
    doc = api.get("/openapi.json").json()
    bare = [f"{name}.{field}" for name, schema in doc["components"]["schemas"].items()
            for field, prop in schema.get("properties", {}).items() if not prop.get("description")]
    assert bare == [], f"{len(bare)} fields without a description"
    order = doc["components"]["schemas"]["OrderOut"]["properties"]
    assert "held" in order["escrow_balance"]["description"] and "bearer" in \
        doc["components"]["schemas"]["SessionOut"]["properties"]["token_type"]["description"]
