"""The result server deletes delivered bodies after their retention; a later client gets the rest, clearly."""

import json
import time
from pathlib import Path

from core.settings import Settings
from results.server.app import ResultServer
from tests.conftest import ThreadedServer, make_settings
from tests.flows.conftest import wait_for
from tests.results.server.conftest import page
from tests.results.server.test_delivery import run_client, sidecars


def test_bodies_go_after_delivery_and_retention_and_a_new_client_gets_their_metadata(
        tmp_path: Path, settings: Settings, customer) -> None:  # type: ignore[no-untyped-def]
    quick = make_settings(tmp_path, settings.resolved_store_url, settings.resolved_redis_url,
                          result_body_retention_seconds=0, result_prune_interval_seconds=0.2)
    with ThreadedServer(ResultServer(quick).app) as server:
        order = customer.order(runs=3)
        customer.deliver(order, [1, 2])
        first = run_client(server.url, customer.token(), [order.id], tmp_path / "first")
        assert first.returncode == 0, first.stdout + first.stderr
        keys = [f"{order.id}:{n}" for n in (1, 2)]
        wait_for(lambda: all(customer.store.get_result(k).body_pruned_at for k in keys), 30,  # type: ignore[union-attr]
                 "the delivered bodies deleted")
        customer.deliver(order, [3])
        time.sleep(1)  # several pruning passes
        assert customer.store.get_result(f"{order.id}:3").body == page(order.id, 3), "not delivered: kept"  # type: ignore[union-attr]

        second = run_client(server.url, customer.token(), [order.id], tmp_path / "second")
    assert second.returncode == 0, second.stdout + second.stderr
    output = " ".join(second.stdout.split())
    assert "3 result(s) written" in output and "(2 without their page: the store had deleted it" in output
    before = {m["n"]: m for m in sidecars(tmp_path / "first", order.id)}
    after = {m["n"]: m for m in sidecars(tmp_path / "second", order.id)}
    for n in (1, 2):
        assert after[n]["body_pruned_at"] is not None and "body" not in after[n]
        assert {k: v for k, v in after[n].items() if k != "body_pruned_at"} == {
            k: v for k, v in before[n].items() if k not in ("body_pruned_at", "body")}, "hash, size, status, timings"
        assert (tmp_path / "first" / order.id / before[n]["body"]).read_bytes() == page(order.id, n)
    assert after[3]["body_pruned_at"] is None
    assert (tmp_path / "second" / order.id / after[3]["body"]).read_bytes() == page(order.id, 3)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "second" / order.id).iterdir()) == [
        "000001", "000002", "000003", "000003"], "no body file for a deleted body"
    assert json.loads((tmp_path / "second" / ".crawlcoin" / "cursor.json").read_text()) == {order.id: 3}
