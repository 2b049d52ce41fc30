"""The erasure-request ledger: requests, their records and proofs (core.py), in a directory or in a
shared database (database.py)."""
