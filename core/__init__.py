"""Domain core shared by every crawlcoin process: settings, schemas, errors, ledger rules, storage."""
