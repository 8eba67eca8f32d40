"""Root keys: encrypted storage, the rotation policy and an in-memory cache.

The only code that touches root-key rows. Imports nothing from `tokensvc`.
"""

from keystore.crypto import KeyEncryptionKey, SecretBytes
from keystore.db import Base, UTCDateTime, create_engine
from keystore.errors import (
    InvalidKeyEncryptionKey,
    KeyDecryptionError,
    KeystoreError,
    NoCurrentKey,
    StoreUnavailable,
    UnusableDatabaseUrl,
)
from keystore.keyring import KeyInfo, Keyring, RootKey
from keystore.policy import RotationPolicy

__all__ = [
    "Base",
    "InvalidKeyEncryptionKey",
    "KeyDecryptionError",
    "KeyEncryptionKey",
    "KeyInfo",
    "Keyring",
    "KeystoreError",
    "NoCurrentKey",
    "RootKey",
    "RotationPolicy",
    "SecretBytes",
    "StoreUnavailable",
    "UTCDateTime",
    "UnusableDatabaseUrl",
    "create_engine",
]
