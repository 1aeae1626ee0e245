"""Results reach the customer's disk: backlog, live, resumed after a crash, never duplicated."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import ledger
from tests.flows.conftest import wait_for

CRAWLCOIN = str(Path(sys.executable).parent / "crawlcoin")


def run_client(server: str, token: str, orders: list[str], out: Path, once: bool = True,
               timeout: float = 120, changes: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [CRAWLCOIN, "results", "--server", server, "--token", token, "--out", str(out)]
    for o in orders:
        argv += ["--order", o]
    if once:
        argv.append("--once")
    if changes:
        argv.append("--changes")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRAWLCOIN_")} | {"COLUMNS": "200"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def sidecars(out: Path, order_id: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / order_id).glob("*.meta.json"))]


def server_cursor(db: sqlite3.Connection, order_id: str) -> int:
    """The furthest n the result server recorded as delivered for the order (to any token)."""
    row = db.execute("SELECT max(last_n) FROM delivery_cursors WHERE order_id = ?", (order_id,)).fetchone()
    return row[0] or 0


def test_offline_client_gets_every_result_later_in_order(result_server, customer, tmp_path) -> None:
    order = customer.order(runs=5)
    hashes = customer.deliver(order, [3, 1, 2, 5, 4])  # delivered out of order while the client is offline
    out = tmp_path / "out"
    done = run_client(result_server, customer.token(), [order.id], out)
    assert done.returncode == 0, done.stdout + done.stderr
    metas = sidecars(out, order.id)
    assert [m["n"] for m in metas] == [1, 2, 3, 4, 5]
    expected = dict(zip([3, 1, 2, 5, 4], hashes, strict=True))
    for meta in metas:
        body = (out / order.id / meta["body"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == meta["sha256"] == expected[meta["n"]]
        assert meta["body"].endswith(".html") and meta["status"] == 200
    again = run_client(result_server, customer.token(), [order.id], out)
    assert again.returncode == 0 and len(list((out / order.id).iterdir())) == 10, "nothing written twice"


def test_live_results_arrive_while_connected(result_server, customer, tmp_path) -> None:
    order = customer.order(runs=3)
    out = tmp_path / "out"
    argv = [CRAWLCOIN, "results", "--server", result_server, "--token", customer.token(), "--out", str(out),
            "--order", order.id]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        customer.deliver(order, [1])
        wait_for(lambda: len(sidecars(out, order.id)) == 1, 30, "the first live result")
        customer.deliver(order, [2, 3])
        wait_for(lambda: len(sidecars(out, order.id)) == 3, 30, "the other live results")
    finally:
        # The client keeps waiting for more results until the order finishes; stop it as a user would.
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert [m["n"] for m in sidecars(out, order.id)] == [1, 2, 3]


def test_many_orders_live_at_once_each_get_every_result_once_in_order(result_server, customer, tmp_path) -> None:
    """A marketplace's minute: many orders each get a result at the same moment. The server's deliveries gather
    their store calls (`results.server.gather`); every order still gets each of its results once, in n order."""
    orders = [customer.order(runs=3) for _ in range(60)]
    out = tmp_path / "out"
    argv = [CRAWLCOIN, "results", "--server", result_server, "--token", customer.token(), "--out", str(out)]
    for order in orders:
        argv += ["--order", order.id]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        for n in (1, 2, 3):
            for order in orders:  # each order's result announced on its own, all within moments
                customer.deliver(order, [n])
            wait_for(lambda n=n: all(len(sidecars(out, o.id)) == n for o in orders), 60, f"round {n} on disk")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    for order in orders:
        assert [m["n"] for m in sidecars(out, order.id)] == [1, 2, 3]
        assert len(list((out / order.id).iterdir())) == 6, "a page and its .meta.json per result, nothing twice"


def test_a_delivery_rides_through_the_store_refusing_writes(result_server, customer, store_url, tmp_path) -> None:
    """Another process holds the SQLite store's write lock longer than the busy timeout: recording what the client
    acknowledged fails (for every delivery waiting on that gathered call). The delivery starts again from what
    the client acknowledged, and once the store takes writes again every result is on disk once and recorded."""
    order = customer.order(runs=6)
    customer.deliver(order, [1, 2, 3])
    out, token = tmp_path / "out", customer.token()
    blocker = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # readers go on (WAL); writers wait 30 s, then fail
    argv = [CRAWLCOIN, "results", "--server", result_server, "--token", token, "--out", str(out), "--order", order.id]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len(sidecars(out, order.id)) == 3, 30, "the first results, while writes wait")
        time.sleep(35)  # past the busy timeout: the delivery's write failed
        blocker.execute("ROLLBACK")
        customer.deliver(order, [4, 5, 6])
        wait_for(lambda: len(sidecars(out, order.id)) == 6, 60, "the results stored after the store came back")
        # The client writes a batch, then acknowledges it: the server records the acknowledgement a moment after
        # the files appear, and a client stopped in between leaves them undelivered (they come again, once each).
        wait_for(lambda: server_cursor(blocker, order.id) == 6, 60, "the server recording all six as delivered")
    finally:
        blocker.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert [m["n"] for m in sidecars(out, order.id)] == [1, 2, 3, 4, 5, 6]
    assert len(list((out / order.id).iterdir())) == 12, "nothing written twice"
    fresh = run_client(result_server, token, [order.id], tmp_path / "fresh")  # no local cursor: the server's
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert not list((tmp_path / "fresh").glob("*/*.meta.json")), "the server recorded all six as delivered"


def test_client_killed_mid_delivery_resumes_without_gap_or_duplicate(result_server, customer, tmp_path) -> None:
    order = customer.order(runs=1000)  # several batches: the kill lands between two of them
    customer.deliver(order, list(range(1, 1001)))
    out = tmp_path / "out"
    token = customer.token()
    argv = [CRAWLCOIN, "results", "--server", result_server, "--token", token, "--out", str(out),
            "--order", order.id, "--once"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(list((out / order.id).glob("*.meta.json"))) >= 40 if (out / order.id).exists() else False,
             60, "some results on disk", poll=0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(sidecars(out, order.id))
    assert 40 <= partial < 1000, f"the client was killed mid-delivery ({partial} written)"
    done = run_client(result_server, token, [order.id], out)
    assert done.returncode == 0, done.stdout + done.stderr
    metas = sidecars(out, order.id)
    assert [m["n"] for m in metas] == list(range(1, 1001)), "1,000 files, no gap, no duplicate"
    assert len([p for p in (out / order.id).glob("*.html") if not p.name.startswith(".")]) == 1000
    assert not list((out / order.id).glob(".tmp-*")), "no half-written files left behind"


@pytest.mark.parametrize("case", ["other users order", "token limited to another order", "mine-only token",
                                  "bad token"])
def test_tokens_only_reach_their_own_orders(result_server, customer, other_customer, tmp_path, case) -> None:
    order_x, order_y = customer.order(runs=1), customer.order(runs=1)
    token = {
        "other users order": lambda: other_customer.token(),
        "token limited to another order": lambda: customer.token(order_id=order_x.id),
        "mine-only token": lambda: customer.token(scopes=("mine",)),
        "bad token": lambda: "cc_0123456789abcdef_wrong",
    }[case]()
    customer.deliver(order_y, [1])
    done = run_client(result_server, token, [order_y.id], tmp_path / "out", timeout=60)
    assert done.returncode != 0
    message = {"other users order": f"order {order_y.id} not found",
               "token limited to another order": f"limited to order {order_x.id}",
               "mine-only token": "lacks the 'results' scope",
               "bad token": "unknown API token"}[case]
    assert message in done.stdout + done.stderr and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "out" / order_y.id).exists()


def test_a_live_client_ends_as_soon_as_its_order_is_cancelled(result_server, customer, settings, redis,
                                                               tmp_path, monkeypatch) -> None:
    """Cancelling refunds the queued repetitions: the result server learns it from a notice, not a poll."""
    import asyncio
    from datetime import UTC, datetime

    from redis.asyncio import Redis as AsyncRedis

    from core.queue import JobQueue
    from flows.dispatch import dispatch_order
    from flows.prefect_sync import PrefectSync
    from results.server import delivery

    monkeypatch.setattr(delivery, "SAFETY_POLL_SECONDS", 3600.0)  # only a notice can wake a delivery now
    order = customer.new_order(runs=5, every=60)

    async def dispatch() -> None:
        aredis = AsyncRedis.from_url(settings.resolved_redis_url)
        queue = JobQueue(aredis)
        await dispatch_order(customer.store, queue, settings, order.id, "run-1")  # claims and queues 1-5
        assert await queue.release_due(datetime.now(UTC).timestamp() + 1) == 1  # 1 is due now, 2-5 later
        await aredis.aclose()

    asyncio.run(dispatch())
    customer.deliver(order, [1])
    out = tmp_path / "out"
    argv = [CRAWLCOIN, "results", "--server", result_server, "--token", customer.token(), "--out", str(out),
            "--order", order.id]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: len(sidecars(out, order.id)) == 1, 30, "the first result")
        assert customer.store.cancel_order(order.id) is not None

        async def sync_cancel() -> None:  # what the API's sync path does next (no deployment to delete)
            aredis = AsyncRedis.from_url(settings.resolved_redis_url)
            cancelled = customer.store.get_order(order.id)
            assert cancelled is not None and cancelled.deployment_id is None
            await PrefectSync(None, customer.store, JobQueue(aredis), settings).sync_order(cancelled)  # type: ignore[arg-type]
            await aredis.aclose()

        asyncio.run(sync_cancel())
        code = proc.wait(timeout=30)  # finished: it exits by itself
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read() if proc.stdout else ""
    assert code == 0, output
    assert [m["n"] for m in sidecars(out, order.id)] == [1]
    assert customer.store.get_balance(ledger.escrow_account(order.id)) == 0, "repetitions 2-5 were refunded"


def test_a_client_of_before_batches_still_gets_one_result_per_call(result_server, customer) -> None:
    """A client that subscribes without a window (crawlcoin before batches) is called `result` per result."""
    import asyncio

    import socketio

    from core.protocol.results import NAMESPACE, decode_result
    from tests.results.server.conftest import page

    order = customer.order(runs=20)
    customer.deliver(order, list(range(1, 21)))
    token = customer.token()

    async def old_client() -> dict[int, bytes]:
        got: dict[int, bytes] = {}
        done = asyncio.Event()
        sio = socketio.AsyncClient()

        @sio.on("result", namespace=NAMESPACE)
        async def on_result(data: object) -> dict[str, bool]:
            msg, body = decode_result(data)
            got[msg.n] = body
            return {"ok": True}

        @sio.on("caught_up", namespace=NAMESPACE)
        async def on_caught_up(data: dict) -> None:
            if data["cursor"] == 20:
                done.set()

        await sio.connect(result_server, auth={"token": token}, namespaces=[NAMESPACE], transports=["websocket"])
        reply = await sio.call("subscribe", {"orders": {order.id: None}}, namespace=NAMESPACE, timeout=30)
        assert reply == {"ok": True, "orders": {order.id: 0}}
        await asyncio.wait_for(done.wait(), 60)
        await sio.disconnect()
        return got

    got = asyncio.run(old_client())
    assert got == {n: page(order.id, n) for n in range(1, 21)}, "every result, its body uncompressed"
    assert customer.store.get_delivery_cursor(token.split("_")[1], order.id) == 20, "the cursor moved on acks"
