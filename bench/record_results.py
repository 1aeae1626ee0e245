"""The store's result write path: N results recorded one at a time vs as one batch, same store, same run.

    python bench/record_results.py STORE_URL [--results 100] [--rounds 2]

STORE_URL is any store URL (`sqlite:///…`, `postgresql://…`, `cassandra://host:port/keyspace`). For
each round it claims an order of 2N repetitions, records N results one call each, then N more in
one `record_results` call, checks every one was paid, and prints both rates.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import ledger  # noqa: E402
from core.storage import open_store  # noqa: E402
from tests.core.storage.test_contract import claimed, new_user, result_for  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store_url")
    parser.add_argument("--results", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n = args.results
    store = open_store(args.store_url)
    try:
        for i in range(args.rounds):
            _, order = claimed(store, runs=2 * n)
            miner = new_user(store)
            t0 = time.monotonic()
            for k in range(1, n + 1):
                store.record_result(result_for(order, k, miner))
            t1 = time.monotonic()
            out = store.record_results([result_for(order, k, miner) for k in range(n + 1, 2 * n + 1)])
            t2 = time.monotonic()
            assert all(r.outcome.value == "paid" for r in out)
            assert store.get_balance(ledger.escrow_account(order.id)) == 0
            print(f"round {i}: {n} results one call each {n / (t1 - t0):7.0f}/s; in one batch {n / (t2 - t1):7.0f}/s")
    finally:
        store.close()


if __name__ == "__main__":
    main()
