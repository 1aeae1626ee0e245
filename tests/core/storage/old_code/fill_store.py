"""Run by test_upgrade.py with an older crawlcoin first on sys.path: make a store, use it, print what it holds.

Usage: python fill_store.py OLD_TREE STORE_URL. Only APIs of commit 3a4523b's core.storage are used.
"""

import json
import sys
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import core
from core import ledger, schedules
from core.storage import open_store
from core.storage.base import ApiToken, Order, Result, User

old_tree, url = Path(sys.argv[1]).resolve(), sys.argv[2]
if not Path(core.__file__).resolve().is_relative_to(old_tree):
    sys.exit(f"imported core from {core.__file__}, not from the old tree {old_tree}")

t0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
store = open_store(url)
customer = User(id="00000000-0000-4000-8000-00000000c001", username="customer", password_hash="argon2-hash-c",
                totp_secret="SEALEDSECRET", created_at=t0)
miner = User(id="00000000-0000-4000-8000-00000000a001", username="miner", password_hash="argon2-hash-m",
             created_at=t0)
for user in (customer, miner):
    store.create_user(user)
store.enable_totp(customer.id)
store.transfer(ledger.faucet_key(customer.id, "first"), ledger.MINT, ledger.user_account(customer.id), 1000, "faucet")


def order(order_id: str, runs: int, price: int) -> Order:
    made = Order(id=order_id, owner_id=customer.id, url=f"https://example.com/{order_id[-4:]}", method="GET",
                 headers={"Accept": "text/html"}, schedule_kind="interval", every_seconds=60, start_at=t0,
                 max_runs=runs, price_per_run=price, request_hash=f"hash-{order_id}", created_at=t0, updated_at=t0)
    made.next_due_at = schedules.first_due(made)
    return made


live = order("00000000-0000-4000-8000-0000000000a1", 5, 7)
cancelled = order("00000000-0000-4000-8000-0000000000b2", 4, 3)
for o in (live, cancelled):
    store.create_order(o)
store.cancel_order(cancelled.id)
claim = store.claim_repetitions(live.id, "flow-run-1", t0 + timedelta(seconds=150), t0, catchup_seconds=3600)
assert [r.n for r in claim.queued] == [1, 2, 3], claim

bodies = {1: b"<html>first page " + bytes(range(256)) + b"</html>", 2: b"<html>second page</html>" * 500}
for n, body in bodies.items():
    key = f"{live.id}:{n}"
    outcome = store.record_result(Result.with_body(
        body, 2 * 1024 * 1024, job_key=key, order_id=live.id, n=n, miner_id=miner.id,
        fetched_at=t0 + timedelta(seconds=60 * n), status=200, final_url=live.url,
        headers={"content-type": "text/html"}, elapsed_ms=40 + n, stored_at=t0 + timedelta(seconds=60 * n + 1)))
    assert outcome == "paid", outcome

results_token = ApiToken(id="tok-results-0001", owner_id=customer.id, name="laptop", secret_hash="sha-r",
                         scopes=["results"], order_id=live.id, created_at=t0)
mine_token = ApiToken(id="tok-mine-0001", owner_id=miner.id, name="rig", secret_hash="sha-m", scopes=["mine"],
                      created_at=t0 + timedelta(seconds=1))
for token in (results_token, mine_token):
    store.create_api_token(token)
store.advance_delivery_cursor(results_token.id, live.id, 1)

accounts = [ledger.MINT, ledger.user_account(customer.id), ledger.user_account(miner.id),
            ledger.escrow_account(live.id), ledger.escrow_account(cancelled.id)]
state = {
    "core_file": core.__file__,
    "users": {u.id: u.username for u in (customer, miner)},
    "balances": {a: store.get_balance(a) for a in accounts},
    "entries": {a: [[e.txn_key, e.delta, e.balance_after] for e in store.list_entries(a, 100)] for a in accounts},
    "orders": {o.id: {"status": str(got.status), "runs_claimed": got.runs_claimed, "max_runs": got.max_runs,
                      "next_due_at": got.next_due_at.isoformat() if got.next_due_at else None}
               for o in (live, cancelled) if (got := store.get_order(o.id))},
    "repetitions": {r.key: [str(r.state), r.flow_run_id] for r in store.get_repetitions(live.id, [1, 2, 3])},
    "results": {r.job_key: {"body_hex": r.body.hex(), "sha256": r.sha256, "body_size": r.body_size,
                            "compressed_hex": r.body_zlib.hex(), "fetched_at": r.fetched_at.isoformat()}
                for r in store.list_results(live.id)},
    "tokens": {t.id: {"owner_id": t.owner_id, "scopes": t.scopes, "order_id": t.order_id, "secret_hash": t.secret_hash}
               for t in (results_token, mine_token)},
    "cursor": store.get_delivery_cursor(results_token.id, live.id),
}
assert all(zlib.decompress(bytes.fromhex(r["compressed_hex"])) == bodies[int(k.rsplit(":", 1)[1])]
           for k, r in state["results"].items())
store.close()
print(json.dumps(state))
