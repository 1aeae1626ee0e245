"""Coin ledger rules: account names and the idempotency keys of every kind of movement.

Every movement is one balanced transfer (debit one account, credit another, same integer
amount) stored under an idempotency key: the same key twice moves coins once. Coins enter
the system only from the mint account (dev faucet, admin grants, and the validation fees
the platform pays miners for checking each other's results), the one account whose balance
may go below zero, so the sum over all accounts, mint included, is always 0.
"""

MINT = "system:mint"


def user_account(user_id: str) -> str:
    return f"user:{user_id}"


def escrow_account(order_id: str) -> str:
    return f"escrow:{order_id}"


def hold_key(order_id: str) -> str:
    """Customer → escrow when an order is created."""
    return f"hold:{order_id}"


def reward_key(job_key: str) -> str:
    """Escrow → miner for one delivered repetition; paid once per job whatever is delivered twice."""
    return f"reward:{job_key}"


def validation_key(job_key: str, miner_id: str) -> str:
    """Mint → miner for fetching a repetition again to check another miner's result (the platform pays)."""
    return f"validation:{job_key}:{miner_id}"


def refund_job_key(job_key: str) -> str:
    """Escrow → customer for a repetition that failed or could not run."""
    return f"refund:{job_key}"


def cancel_refund_key(order_id: str) -> str:
    """Escrow → customer for the unclaimed repetitions of a cancelled order."""
    return f"refund:{order_id}:cancel"


def faucet_key(user_id: str, request_key: str) -> str:
    return f"faucet:{user_id}:{request_key}"
