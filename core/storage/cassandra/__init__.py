"""Cassandra backend: the Store protocol on cassandra-driver, for clusters of any size.

One module per part, composed into `CassandraStore` (`store`): `session` (connection, LWT
helpers), `schema` (URL, keyspace, tables), `accounts`, `ledger` (the Paxos account logs),
`orders`, `claims`, `results` (with delivery cursors), `retention` (deleting delivered bodies),
`watch` (observations of results), `outbox` (Prefect sync requests) and `recovery` (the
`recover_pending` sweep). The rules every backend shares are in `core.storage.rules`; this
package only makes them stick, as follows.

Every query names one partition; nothing uses ALLOW FILTERING or scans a table. Multi-step
operations never rely on multi-partition transactions; instead each one has a single
linearization point (a lightweight transaction, LWT, on one partition) and leaves enough
state behind that whoever finds it half done can finish it, idempotently.

Ledger. Each account is an append-only log `account_log (account, seq)`, newest first. To
apply a transfer's entry to an account, read the entries after the transfer's recorded
starting seq with LOCAL_SERIAL (which also completes any in-flight Paxos round, so a write
whose outcome was unknown — WriteTimeout with WriteType.CAS — is settled): if the transfer's
key is among them it was applied already; otherwise refuse if `balance_after + delta < 0`
(except for the mint) and append `seq + 1 … IF NOT EXISTS`, retrying on conflict. Paxos
serialises the appends of one account, so balances never go negative and each transfer
appears at most once per account. A transfer is a row `transfers (key) … state='pending'`
inserted IF NOT EXISTS (with a marker in the small `pending_ops` table), then the debit,
then the credit, then `state='applied' IF state='pending'`. The same key again finds the row:
same accounts and amount → the same transfer (completing it if pending), else
IdempotencyConflict. A source that cannot pay is refused before anything is applied: the row
is deleted and InsufficientFunds raised, leaving no trace. A process that dies between the two
halves leaves a pending row that the next caller with the key, `get_transfer`, or the
`recover_pending` sweep completes: a debit without its credit is never final.

Orders. The order row is written in phase `pending`, then its hold transfer `hold:{id}`, then
the row flips to `live`; a pending order is completed (or, if its owner cannot pay, removed
with its listing row) by whoever reads it. Claims are a compare-and-set of the order's
counters (runs_claimed, next due time, and the claiming flow run) followed by the job rows and
a `dispatch_claims` row; a claim whose job rows are missing is completed by the next claim of
the order or by a replay of the same flow run. Status changes are LWTs on the order row; a
result is stored and its job settled in one LWT on the job row, then paid; cancelling flips the
status, then refunds. Each multi-step operation leaves a `pending_ops` marker until it is done,
so `recover_pending` (run at start-up and by the reconcile flow) finds the ones a crash left.

Consistency: LOCAL_QUORUM for reads and writes and LOCAL_SERIAL for LWTs and serial reads,
so every decision is linearizable within the local datacenter and a read that follows a
write sees it (quorums overlap). See the README for running on a multi-node cluster.
"""

from core.storage.cassandra.store import CassandraStore

__all__ = ["CassandraStore"]
