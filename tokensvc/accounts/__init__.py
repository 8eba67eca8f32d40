"""Accounts: users and their store, passwords (argon2id), lockout, and the first admin."""
