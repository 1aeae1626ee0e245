"""The schema crawlcoin created before migrations (commit 3a4523b: `create_all`, schema_version 1).

Frozen: it spells out every column instead of importing the models, so it keeps creating that
schema whatever the models become. A store made by that code is stamped with this revision.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("account", sa.String(80), nullable=False),
        sa.Column("balance", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account"),
        sa.CheckConstraint("balance >= 0 OR account = 'system:mint'", name="balance_not_negative"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("secret_hash", sa.String(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("order_id", sa.String(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_tokens_owner_id", "api_tokens", ["owner_id"])
    op.create_table(
        "delivery_cursors",
        sa.Column("token_id", sa.String(36), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("last_n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("token_id", "order_id"),
    )
    op.create_table(
        "dispatch_claims",
        sa.Column("flow_run_id", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("first_n", sa.Integer(), nullable=False),
        sa.Column("last_n", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("flow_run_id"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("account", sa.String(80), nullable=False),
        sa.Column("txn_key", sa.String(200), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.Column("balance_after", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("reference", sa.String(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("account", "txn_key"),
    )
    op.create_index("ix_ledger_entries_created_at", "ledger_entries", ["created_at"])
    op.create_table(
        "login_sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.String(), nullable=True),
        sa.Column("schedule_kind", sa.String(), nullable=False),
        sa.Column("every_seconds", sa.Integer(), nullable=True),
        sa.Column("cron", sa.String(), nullable=True),
        sa.Column("timezone", sa.String(), nullable=True),
        sa.Column("start_at", TZ, nullable=False),
        sa.Column("max_runs", sa.Integer(), nullable=False),
        sa.Column("runs_claimed", sa.Integer(), nullable=False),
        sa.Column("next_due_at", TZ, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("price_per_run", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.String(), nullable=True),
        sa.Column("request_hash", sa.String(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_orders_owner_id", "orders", ["owner_id"])
    op.create_index("ix_orders_created_at", "orders", ["created_at"])
    op.create_table(
        "prefect_sync_requests",
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("requested_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
    )
    op.create_index("ix_prefect_sync_requests_requested_at", "prefect_sync_requests", ["requested_at"])
    op.create_table(
        "repetitions",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("flow_run_id", sa.String(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("due_at", TZ, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_repetitions_order_id", "repetitions", ["order_id"])
    op.create_table(
        "results",
        sa.Column("job_key", sa.String(64), nullable=False),
        sa.Column("order_id", sa.String(36), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("miner_id", sa.String(36), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("final_url", sa.String(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body_zlib", sa.LargeBinary(), nullable=False),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("elapsed_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("error_text", sa.String(), nullable=True),
        sa.Column("fetched_at", TZ, nullable=False),
        sa.Column("stored_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("job_key"),
    )
    op.create_index("ix_results_order_n", "results", ["order_id", "n"], unique=True)
    schema_version = op.create_table(
        "schema_version",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=False),  # INTEGER, not SERIAL
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(schema_version, [{"id": 1, "version": 1}])
    op.create_table(
        "transfers",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("from_account", sa.String(), nullable=False),
        sa.Column("to_account", sa.String(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("reference", sa.String(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("totp_secret", sa.String(), nullable=True),
        sa.Column("totp_enabled", sa.Boolean(), nullable=False),
        sa.Column("totp_last_step", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
    )


def downgrade() -> None:
    for table in ("users", "transfers", "schema_version", "results", "repetitions", "prefect_sync_requests",
                  "orders", "login_sessions", "ledger_entries", "dispatch_claims", "delivery_cursors",
                  "api_tokens", "accounts"):
        op.drop_table(table)
