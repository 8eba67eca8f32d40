"""Tokens: minting, the delegation rule, verification (the hot path), the registry, revocation,
usage, and the subject generations that revoke a subject's tokens."""
