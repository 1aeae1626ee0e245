"""The storage interface every backend (SQLite, PostgreSQL, Cassandra) implements.

Every query is by key: a record's id, or the partition it is listed under (an owner's orders,
tokens, an account's ledger entries). No joins, no scans of whole tables. Operations that
must be atomic — a transfer, creating an order together with its escrow hold, cancelling an
order together with its refund, accepting a TOTP step once — are single methods, so each
backend can make them atomic in its own way (a transaction in SQL, lightweight transactions
and a pending-transfer record in Cassandra).

`Store` is the whole interface; it is composed of one Protocol per domain (accounts, ledger,
orders, results, observations, webhooks, sync outbox), so a piece of code that needs only one domain can say so.
Records (`core.storage.records`) are plain pydantic models; backends copy them in and out.
Datetimes are timezone-aware UTC. The rules every backend applies the same way (what a
delivered result settles, which repetitions a claim takes, what a cancel refunds) are
written once, in `core.storage.rules`.
"""

from datetime import datetime
from typing import Protocol

from core.schemas import OrderStatus
from core.storage.records import (
    Acknowledged,
    ApiToken,
    Claim,
    Cursor,
    LedgerEntry,
    LoginSession,
    Observation,
    OpenClaim,
    Order,
    OrderEdit,
    Pruned,
    Recorded,
    Repetition,
    Result,
    Transfer,
    User,
    WatchCursor,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)


class AccountStore(Protocol):
    """Users, their login sessions and their API tokens."""

    # users -------------------------------------------------------------------------------
    def create_user(self, user: User) -> None:
        """Store a new user; raise Conflict if the (lower-cased) username is taken."""

    def get_user(self, user_id: str) -> User | None: ...

    def get_user_by_username(self, username: str) -> User | None: ...

    def set_totp_secret(self, user_id: str, secret: str) -> bool:
        """Replace the pending TOTP secret; False if two-factor is already enabled."""

    def enable_totp(self, user_id: str) -> None: ...

    def use_totp_step(self, user_id: str, step: int) -> bool:
        """Record that the TOTP code of time step `step` was used.

        True only if `step` is newer than every step used before, atomically: of two
        concurrent logins with the same code exactly one gets True.
        """

    # sessions ----------------------------------------------------------------------------
    def create_session(self, session: LoginSession) -> None: ...

    def get_session(self, session_id: str) -> LoginSession | None: ...

    def revoke_session(self, session_id: str, at: datetime) -> None: ...

    # API tokens --------------------------------------------------------------------------
    def create_api_token(self, token: ApiToken) -> None: ...

    def get_api_token(self, token_id: str) -> ApiToken | None: ...

    def list_api_tokens(self, owner_id: str) -> list[ApiToken]:
        """The owner's tokens, newest first."""

    def revoke_api_token(self, owner_id: str, token_id: str, at: datetime) -> bool:
        """Revoke the owner's token; False if the owner has no such token."""


class LedgerStore(Protocol):
    """Coin balances, moved only by idempotent transfers between two accounts."""

    def transfer(
        self, key: str, from_account: str, to_account: str, amount: int, kind: str, reference: str | None = None
    ) -> Transfer:
        """Move `amount` coins, once per `key`.

        Returns the stored transfer; a second call with the same key and the same accounts
        and amount returns the first transfer and moves nothing. Raises IdempotencyConflict
        if the key was used for a different movement and InsufficientFunds if the source
        (any account but the mint) would go below zero — under any concurrency.
        """

    def get_transfer(self, key: str) -> Transfer | None: ...

    def get_balance(self, account: str) -> int:
        """Current balance; 0 for an account that never moved coins."""

    def list_entries(self, account: str, limit: int, before: Cursor | None = None) -> list[LedgerEntry]:
        """The account's ledger entries, newest first, strictly older than `before`."""

    def recover_pending(self) -> int:
        """Finish the multi-step operations a crashed process left half done; returns how many it found.

        A backend whose operations are single transactions has none (SQL returns 0). Cassandra
        completes pending transfers, order creations, claims, settlements and cancellations:
        each one is completed or, if it never took effect, removed. Safe to run at any time.
        """


class OrderStore(Protocol):
    """Orders, with their escrow, and the repetitions dispatch runs claim of them."""

    # orders ------------------------------------------------------------------------------
    def create_order(self, order: Order) -> tuple[Order, bool]:
        """Store the order and hold its cost in escrow, atomically.

        Returns (order, True) when created, with a Prefect sync requested. If an order with the same id exists (an
        idempotent retry) returns (existing, False) when its request_hash matches and
        raises IdempotencyConflict otherwise. Raises InsufficientFunds — and stores
        nothing — when the owner cannot pay the cost.
        """

    def get_order(self, order_id: str) -> Order | None: ...

    def get_orders(self, order_ids: list[str]) -> list[Order]:
        """The orders of `order_ids` that exist, in no particular order (one round trip where the backend can)."""

    def list_orders(self, owner_id: str, limit: int, before: Cursor | None = None) -> list[Order]:
        """The owner's orders, newest first, strictly older than `before`."""

    def set_order_status(
        self, order_id: str, allowed_from: set[OrderStatus], to: OrderStatus, next_due_at: datetime | None = None
    ) -> Order | None:
        """Change the status (and next due time, if given) if it is one of `allowed_from`; else None.

        Also requests a Prefect sync of the order, in the same atomic step.
        """

    def cancel_order(self, order_id: str) -> tuple[Order, int] | None:
        """Cancel an active or paused order and refund its unclaimed repetitions, atomically.

        Returns (order, refunded coins), or None if the order is not active or paused.
        """

    def edit_order(self, order_id: str, edit: OrderEdit, key: str, now: datetime) -> Order | None:
        """Change an active or paused order as `edit` says (`rules.plan_edit`), atomically with its escrow.

        The escrow is topped up from the owner or refunded to the owner by the difference in cost
        (ledger key `rules.edit_key(order_id, key)`: a retried request moves nothing twice), and a
        Prefect sync is requested, in the same atomic step. Claimed repetitions are untouched. None for
        an unknown order; raises Conflict (not active or paused), InvalidInput (max_runs below the
        repetitions claimed) or InsufficientFunds, changing nothing.
        """

    def set_deployment_id(self, order_id: str, deployment_id: str | None) -> None: ...

    # repetitions ---------------------------------------------------------------------------
    def claim_repetitions(
        self, order_id: str, flow_run_id: str, horizon: datetime, now: datetime, catchup_seconds: int
    ) -> Claim:
        """Claim, atomically, every unclaimed repetition of an active order due before `horizon`.

        Idempotent per flow run: a second call with the same `flow_run_id` claims nothing new
        and returns the repetitions that run claimed (replay=True). Repetitions due more than
        `catchup_seconds` before `now` are refunded to the customer instead of queued. Claiming
        the last repetition leaves next_due_at None and requests a sync (the order completes once
        its last job has left the queue). Raises NotFound for an unknown order.

        A claim with queued repetitions is recorded as an open claim (`open_claims`), not yet
        confirmed queued, in the same atomic step.
        """

    def get_repetitions(self, order_id: str, ns: list[int]) -> list[Repetition]: ...

    def get_repetitions_of(self, wanted: dict[str, list[int]], settled_only: bool = False) -> list[Repetition]:
        """`get_repetitions` of several orders at once (order id → its n): those that exist, in no particular order.
        `settled_only`: only the settled ones (done, failed, refunded), for readers that stop at the first open one
        — a result server's deliveries and the watcher, which look a page ahead of what is settled."""

    def unclaim(self, order_id: str, ns: list[int]) -> int:
        """Return withdrawn, never-released repetitions of a paused order to its counter.

        They must be the newest claimed ones (`ns` = k+1..runs_claimed); otherwise they are
        refunded instead. Returns how many went back.
        """

    def refund_repetitions(self, order_id: str, ns: list[int]) -> int:
        """Refund queued repetitions that will never run (idempotent); returns coins refunded."""

    # open claims: claimed in the store, to be held by Valkey until settled -------------------
    def open_claims(self, claimed_before: datetime, limit: int) -> list[OpenClaim]:
        """Claims made before `claimed_before` that are still open, oldest first, at most `limit`.

        A claim is open from `claim_repetitions` (when it queued any repetition) until `close_claim`;
        the requeue pass uses them to find jobs Valkey lost or never got, across all orders.
        """

    def open_repetitions(self, claims: list[OpenClaim],
                         due_before: datetime | None = None) -> dict[str, list[Repetition]]:
        """The repetitions each claim holds that are still open (queued or leased), by its flow run id, in n
        order — many claims in one read where the store can. A repetition in a claim's range that a later claim
        (after an unclaim) holds is not its. Settled ones are left out: the requeue and lateness passes, which
        read every open claim every few seconds, look only at open ones. With `due_before`, only those due
        before it (the lateness pass: a claim holds a whole window, of which only the overdue ones matter)."""

    def confirm_queued(self, flow_run_id: str) -> None:
        """Record that the claim's jobs were put in the Valkey queue (idempotent; no-op if not open)."""

    def close_claim(self, flow_run_id: str) -> None:
        """Forget an open claim whose repetitions are all final (idempotent)."""


class ResultStore(Protocol):
    """What miners delivered, the pay it settles, and how far each result client has read."""

    # results ---------------------------------------------------------------------------------
    def record_results(self, results: list[Result]) -> list[Recorded]:
        """Record results delivered by miners, all in one atomic step (a batch is one round trip).

        For each result, once per job key: store it and settle its repetition. A result
        without an error marks the repetition done and pays the miner the order's price per
        run from the escrow (ledger key `reward:{job}`); a result with an error (target
        refused, robots.txt disallows it, attempts exhausted) marks it refunded and returns
        the price to the customer (`refund:{job}`). A second delivery of the same job, or one
        for a repetition already refunded or failed, changes nothing. Returns one `Recorded`
        per result, in order: its outcome and the coins this call paid the miner for it (the
        price per run when the outcome is `paid`, else 0).
        """

    def record_result(self, result: Result) -> Recorded:
        """`record_results` for one result."""

    def fail_attempt(self, job_key: str, max_attempts: int, last: Result | None = None) -> Repetition | None:
        """Count one attempt at a job that ended without a result (miner gone, lease expired).

        When the repetition reaches `max_attempts` it is marked failed and its price refunded
        to the customer, storing `last` (the final error, if any) as its result — atomically.
        A repetition that is no longer queued or leased is returned unchanged. None if unknown.
        """

    def get_result(self, job_key: str) -> Result | None: ...

    def get_results(self, job_keys: list[str]) -> list[Result]:
        """The results of `job_keys` that exist, in no particular order."""

    def list_results(self, order_id: str, after_n: int = 0, limit: int = 100) -> list[Result]:
        """The order's results with n > `after_n`, by n ascending (a result client's resume point)."""

    # delivery cursors ----------------------------------------------------------------------
    def get_delivery_cursor(self, token_id: str, order_id: str) -> int:
        """The highest repetition n the result client of `token_id` acknowledged for the order; 0 if none."""

    def advance_delivery_cursor(self, token_id: str, order_id: str, n: int) -> None:
        """Move the cursor forward to `n`; never backwards."""

    def record_delivery(self, token_id: str, order_id: str, after_n: int, last_n: int, at: datetime) -> None:
        """The result client of `token_id` acknowledged the order's results after_n < n ≤ last_n at `at`.

        Moves its cursor forward to `last_n` (never backwards) and notes that stretch delivered at `at`,
        which starts its bodies' retention (`prune_result_bodies`). Nothing is noted when last_n ≤ after_n.
        """

    def record_deliveries(self, acknowledged: list[Acknowledged]) -> None:
        """`record_delivery` of each, all at once (one transaction where the backend has them)."""

    # retention of delivered bodies ----------------------------------------------------------
    def prune_result_bodies(self, delivered_before: datetime, now: datetime, limit: int = 100) -> Pruned:
        """Delete the bodies of results delivered (`record_delivery`) before `delivered_before`.

        Everything else about such a result stays (hash, size, status, headers, timings); its
        `body_pruned_at` becomes `now`. A result never delivered keeps its body. Handles at most `limit`
        noted stretches, oldest first, each once; safe to run again and from several processes at once.
        """


class WatchStore(Protocol):
    """What the watcher made of each result (extracted value, change and diff), and how far it got per order."""

    def get_watch_cursor(self, order_id: str) -> WatchCursor:
        """How far the order was observed; `WatchCursor(order_id=…)` (nothing yet) if never."""

    def get_watch_cursors(self, order_ids: list[str]) -> list[WatchCursor]:
        """`get_watch_cursor` of each of `order_ids`, in that order."""

    def get_observations(self, keys: list[tuple[str, int]]) -> list[Observation]:
        """The observations of those (order id, n) that exist, in no particular order."""

    def record_observations_of(self, batches: list[tuple[WatchCursor, list[Observation]]]) -> None:
        """`record_observations` of several orders at once (one transaction where the backend has them)."""

    def record_observations(self, cursor: WatchCursor, observations: list[Observation]) -> None:
        """Store the observations of `cursor`'s order and move its watch cursor forward to `cursor` (never back).

        An observation of an (order, n) stored before is kept, not replaced: observing is
        deterministic, so two watchers of one order write the same thing. The observations are
        written before the cursor moves (in one transaction where the backend has them).
        """

    def list_observations(self, order_id: str, after_n: int = 0, limit: int = 100,
                          changes_only: bool = False) -> list[Observation]:
        """The order's observations with n > `after_n`, by n ascending; only the changes if `changes_only`."""


class WebhookStore(Protocol):
    """Customers' webhooks and the outbox of their deliveries: stored before they are sent, sent until answered."""

    def create_webhook(self, webhook: Webhook) -> None: ...

    def get_webhook(self, webhook_id: str) -> Webhook | None:
        """The webhook, deleted or not; None if there never was one."""

    def get_webhooks(self, webhook_ids: list[str]) -> list[Webhook]:
        """`get_webhook` of each that exists, deleted or not, in no particular order."""

    def list_webhooks(self, owner_id: str) -> list[Webhook]:
        """The owner's webhooks not deleted, oldest first."""

    def list_webhooks_of(self, owner_ids: list[str]) -> list[Webhook]:
        """`list_webhooks` of several owners at once: their webhooks not deleted, oldest first."""

    def delete_webhook(self, owner_id: str, webhook_id: str, at: datetime) -> bool:
        """Mark the owner's webhook deleted (its pending deliveries fail unsent); False if the owner has none such."""

    def add_webhook_deliveries(self, deliveries: list[WebhookDelivery]) -> None:
        """Store new deliveries, due at their `next_attempt_at`; one whose id is stored already is left as it is."""

    def claim_webhook_deliveries(self, now: datetime, until: datetime, limit: int) -> list[WebhookDelivery]:
        """Pending deliveries due by `now`, oldest due first, at most `limit`, each leased until `until`.

        Leasing moves a delivery's `next_attempt_at` to `until` atomically, so of several senders
        claiming at once one gets it; a sender that dies holding it leaves it due again at `until`.
        The deliveries are returned as leased (`next_attempt_at` = `until`).
        """

    def finish_webhook_attempt(self, delivery: WebhookDelivery, at: datetime, status: int | None, error: str | None,
                               delivered: bool, retry_at: datetime | None) -> None:
        """Log one attempt at a claimed `delivery` (as `claim_webhook_deliveries` returned it).

        It becomes delivered, or pending again at `retry_at`, or failed when `retry_at` is None; the
        attempt is counted either way. Nothing happens if the delivery is no longer pending.
        """

    def finish_webhook_attempts(self, attempts: list[WebhookAttempt]) -> None:
        """`finish_webhook_attempt` of each, all at once (one transaction where the backend has them)."""

    def get_webhook_delivery(self, delivery_id: str) -> WebhookDelivery | None: ...

    def list_webhook_deliveries(self, webhook_id: str, limit: int = 50,
                                before: Cursor | None = None) -> list[WebhookDelivery]:
        """The webhook's deliveries, newest first, strictly older than `before` (created_at, id)."""


class SyncOutbox(Protocol):
    """Orders whose Prefect deployment must be brought in line with them (the Prefect sync queue)."""

    def request_sync(self, order_id: str, at: datetime) -> None:
        """Note that the order's Prefect deployment must be brought in line with the order.

        A request for a future `at` is a timer: it becomes pending at that time.
        """

    def pending_syncs(self, limit: int, now: datetime) -> list[tuple[str, datetime]]:
        """Orders whose sync request is due by `now`, oldest first: (order id, requested at)."""

    def finish_sync(self, order_id: str, requested_at: datetime, then: datetime | None = None) -> None:
        """Drop the request unless a newer one came in after `requested_at`; with `then`, keep it as a timer
        for that time instead (unless a newer one came in: that one is worked on first, and sets its own)."""


class Store(AccountStore, LedgerStore, OrderStore, ResultStore, WatchStore, WebhookStore, SyncOutbox, Protocol):
    """Durable state of crawlcoin. Implementations must be safe to share between threads."""

    def close(self) -> None: ...

    def ping(self) -> None:
        """Raise if the backend cannot be reached."""
