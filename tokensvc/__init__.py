"""tokensvc: a macaroon token and credential service."""

__version__ = "0.1.0"
