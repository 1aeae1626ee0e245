"""The FastAPI service: accounts, two-factor login, API tokens, coins and orders."""
