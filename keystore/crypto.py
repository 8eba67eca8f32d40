"""Secrets as types, and the key-encryption key that seals root keys at rest."""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
)
from nacl.exceptions import CryptoError

from keystore.errors import InvalidKeyEncryptionKey, KeyDecryptionError

KEK_BYTES: Final[int] = crypto_aead_xchacha20poly1305_ietf_KEYBYTES
NONCE_BYTES: Final[int] = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_BYTES: Final[int] = crypto_aead_xchacha20poly1305_ietf_ABYTES

KEK_FILE_NAME: Final[str] = "kek"

# The fingerprint is BLAKE2b keyed with the KEK itself: it identifies a KEK to whoever holds it
# and reveals nothing about it to whoever only sees the id (logs, the root_keys table).
_KEK_ID_PERSON: Final[bytes] = b"tokensvc kek-id"
_KEK_ID_MESSAGE: Final[bytes] = b"key-encryption key fingerprint"
_SUBKEY_PERSON: Final[bytes] = b"tokensvc subkey"


class SecretBytes:
    """Bytes that never show up in `repr`, `str`, logs or tracebacks; `.reveal()` to use them."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("SecretBytes wraps bytes")
        self._value = value

    def reveal(self) -> bytes:
        """The secret itself; call it only where the bytes are consumed."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"SecretBytes(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy the secret into caches, queues and crash dumps without anyone asking.
        raise TypeError("SecretBytes cannot be pickled")


class KeyEncryptionKey:
    """The 32-byte key that encrypts root keys at rest; it never comes from the database."""

    __slots__ = ("_key", "kek_id")

    kek_id: str

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_BYTES:
            raise InvalidKeyEncryptionKey(
                f"the key-encryption key must be {KEK_BYTES} bytes, got {len(key)}"
            )
        self._key = SecretBytes(bytes(key))
        self.kek_id = hashlib.blake2b(
            _KEK_ID_MESSAGE, key=key, person=_KEK_ID_PERSON, digest_size=4
        ).hexdigest()

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        """A fresh random key-encryption key."""
        return cls(secrets.token_bytes(KEK_BYTES))

    @classmethod
    def from_base64(cls, value: str) -> KeyEncryptionKey:
        """Parse 32 bytes in standard or URL-safe base64 (surrounding whitespace ignored)."""
        text = value.strip()
        if not text:
            raise InvalidKeyEncryptionKey("the key-encryption key is empty")
        text = text.replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            # `from None`: the decoder's message may quote the offending input.
            raise InvalidKeyEncryptionKey(
                f"the key-encryption key is not valid base64 (expected {KEK_BYTES} random bytes,"
                " e.g. from `head -c 32 /dev/urandom | base64`)"
            ) from None
        return cls(key)

    @classmethod
    def load(
        cls,
        *,
        value: str | None = None,
        file: str | os.PathLike[str] | None = None,
        data_dir: os.PathLike[str] | str | None = None,
    ) -> KeyEncryptionKey:
        """The configured KEK: `value` (base64), else the base64 `file`, else `data_dir/kek`.

        In the embedded mode (only `data_dir` given) the file is created with mode 0600 on first
        use and reused afterwards; several processes starting at once agree on one key.
        """
        if value is not None:
            return cls.from_base64(value)
        if file is not None:
            path = Path(file)
            _refuse_if_world_accessible(path)
            return cls._read_file(path)
        if data_dir is not None:
            return cls._load_or_create(Path(data_dir) / KEK_FILE_NAME)
        raise InvalidKeyEncryptionKey(
            "no key-encryption key configured: give a base64 value, a file, or a data directory"
        )

    @classmethod
    def _read_file(cls, path: Path) -> KeyEncryptionKey:
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise InvalidKeyEncryptionKey(
                f"key-encryption key file {path} does not exist"
            ) from None
        except UnicodeDecodeError:
            raise InvalidKeyEncryptionKey(
                f"key-encryption key file {path} is not base64 text (expected {KEK_BYTES} bytes"
                " in base64, e.g. from `head -c 32 /dev/urandom | base64`)"
            ) from None
        except OSError as exc:
            raise InvalidKeyEncryptionKey(
                f"key-encryption key file {path} cannot be read ({type(exc).__name__})"
            ) from None
        try:
            return cls.from_base64(text)
        except InvalidKeyEncryptionKey as exc:
            raise InvalidKeyEncryptionKey(f"key-encryption key file {path}: {exc}") from None

    @classmethod
    def _load_or_create(cls, path: Path) -> KeyEncryptionKey:
        if not path.exists():
            try:
                _create_exclusively(path, base64.b64encode(secrets.token_bytes(KEK_BYTES)) + b"\n")
            except OSError as exc:
                raise InvalidKeyEncryptionKey(
                    f"cannot create key-encryption key file {path} ({exc.strerror or exc})"
                ) from None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            # Like ssh with a private key: refuse rather than keep using a key others can read.
            raise InvalidKeyEncryptionKey(
                f"key-encryption key file {path} is accessible to other users"
                f" (mode {mode:04o}); run `chmod 600 {path}`"
            )
        return cls._read_file(path)

    def derive(self, purpose: bytes) -> bytes:
        """A 32-byte key for `purpose`, derived one way from this key (BLAKE2b keyed by it).

        For secrets every replica must share without storing them anywhere else, such as the key
        that makes lockout's identity hashes irreversible. Knowing a derived key reveals nothing
        of this one or of keys derived for other purposes.
        """
        if not purpose:
            raise ValueError("a derived key needs a purpose")
        return hashlib.blake2b(
            purpose, key=self._key.reveal(), person=_SUBKEY_PERSON, digest_size=32
        ).digest()

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Seal `plaintext` bound to `aad` (the root key's id): random 24-byte nonce + AEAD output."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed: bytes = crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, aad, nonce, self._key.reveal()
        )
        return nonce + sealed

    def decrypt(self, ciphertext: bytes, *, aad: bytes) -> bytes:
        """Open what `encrypt` sealed with the same `aad`; `KeyDecryptionError` otherwise."""
        if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
            raise KeyDecryptionError("root key ciphertext is truncated")
        nonce, sealed = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
        try:
            plaintext: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, aad, nonce, self._key.reveal()
            )
        except CryptoError:
            raise KeyDecryptionError(
                f"root key ciphertext does not decrypt under key-encryption key {self.kek_id}"
                " (wrong key, tampered data, or a ciphertext moved between rows)"
            ) from None
        return plaintext

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(kek_id={self.kek_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("KeyEncryptionKey cannot be pickled")


def _create_exclusively(path: Path, content: bytes) -> None:
    """Write `content` to `path` with mode 0600 unless it exists; readers never see a partial file.

    The content goes to a private temporary file first and is then hard-linked into place, which
    fails if another process got there first — that process's key wins and both read it.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            # Filesystems without hard links: exclusive create directly (a reader racing the
            # first write may see an empty file and fail once; it is only the first start).
            _write_new(path, content)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def _write_new(path: Path, content: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _refuse_if_world_accessible(path: Path) -> None:
    """InvalidKeyEncryptionKey if every user of the host may read or write the KEK file a
    deployment names (TOKENSVC_KEK_FILE). Group access is allowed: a Kubernetes Secret volume
    is shared with the pod's fsGroup (deploy/k8s: mode 0440); the generated data-dir file is
    held to 0600 (`_load_or_create`). A file that does not exist is reported by `_read_file`."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o007:
        raise InvalidKeyEncryptionKey(
            f"key-encryption key file {path} is accessible to every user of this host"
            f" (mode {mode:04o}); run `chmod o-rwx {path}` (0600, or 0640 for a group)"
        )
