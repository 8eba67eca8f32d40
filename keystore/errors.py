"""The keystore's exception hierarchy; services translate it at their boundary."""

from __future__ import annotations


class KeystoreError(Exception):
    """Root of every error the keystore raises on purpose; never raised itself."""


class InvalidKeyEncryptionKey(KeystoreError, ValueError):
    """The key-encryption key is missing, malformed or stored unsafely."""


class KeyDecryptionError(KeystoreError):
    """A stored root key does not decrypt under the configured key-encryption key."""


class StoreUnavailable(KeystoreError):
    """The database holding the root keys cannot be reached right now."""


class NoCurrentKey(KeystoreError):
    """No current root key could be established for the running interval."""


class UnusableDatabaseUrl(KeystoreError, ValueError):
    """The database URL parses, but its driver cannot use it (a port that is no number, an
    unknown option): said in one line, without the URL or the option's value."""
