"""The seam between the keystore and whatever holds the key-encryption keys (KEKs).

Everything the keystore keeps at rest (root keys, service-token keys, the discharger key, the
deployment secret) is sealed by a `Sealer`: one current KEK seals, every KEK it knows opens, and
each ciphertext is stored with the id of the KEK that sealed it. `LocalKeks` is the provider for
keys from the environment or files (`TOKENSVC_KEK`, `TOKENSVC_KEK_PREVIOUS`, their `_FILE`
variants); a provider for an external key manager (Vault transit, a cloud KMS, an HSM) implements
the same four members.

`seal` and `open` are synchronous on purpose: they run on a root-key cache miss and on every
service-token mint, where a network round trip per call would put the key manager's latency and
availability into minting and verifying. A key-manager provider therefore does envelope
encryption, as Vault's auto-unseal does: at start it asks the key manager to unwrap its data
keys (one per KEK id) and from then on seals and opens locally.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from keystore.crypto import KeyEncryptionKey
from keystore.errors import InvalidKeyEncryptionKey, KeyDecryptionError

__all__ = ["LocalKeks", "Sealed", "Sealer", "UnknownKek"]


class Sealed(NamedTuple):
    """A ciphertext and the id of the KEK that sealed it (stored side by side in a row)."""

    kek_id: str
    ciphertext: bytes


class UnknownKek(KeyDecryptionError):
    """A row is sealed under a KEK this process was not given; its id names the missing key."""

    def __init__(self, what: str, *, kek_id: str, known: Sequence[str]) -> None:
        super().__init__(
            f"{what} is sealed under key-encryption key {kek_id}, which is not configured"
            f" (configured: {', '.join(known)})"
        )
        self.kek_id = kek_id


@runtime_checkable
class Sealer(Protocol):
    """Seals under the current KEK and opens under any KEK it knows, by id."""

    @property
    def current_id(self) -> str:
        """The id of the KEK that `seal` uses."""
        ...

    @property
    def ids(self) -> tuple[str, ...]:
        """Every KEK id `open` accepts, the current one first."""
        ...

    def seal(self, plaintext: bytes, *, aad: bytes) -> Sealed:
        """`plaintext` sealed under the current KEK, bound to `aad`."""
        ...

    def open(self, sealed: Sealed, *, aad: bytes, what: str) -> bytes:
        """The plaintext of `sealed` (which names its KEK), bound to `aad`.

        Raises:
            UnknownKek: `sealed.kek_id` is not one of `ids` (`what` names the row in the message).
            KeyDecryptionError: the ciphertext does not open (wrong key, tampered, moved row).
        """
        ...


class LocalKeks:
    """KEKs held in this process: the current one seals; it and the previous ones open."""

    __slots__ = ("_by_id", "_current")

    def __init__(
        self, current: KeyEncryptionKey, previous: Iterable[KeyEncryptionKey] = ()
    ) -> None:
        self._current = current
        self._by_id: dict[str, KeyEncryptionKey] = {current.kek_id: current}
        for kek in previous:
            # A repeat of the current key (or of another) is harmless: same id, same key.
            self._by_id.setdefault(kek.kek_id, kek)

    @property
    def current(self) -> KeyEncryptionKey:
        """The KEK that seals (also the one the embedded mode's data directory holds)."""
        return self._current

    @property
    def current_id(self) -> str:
        return self._current.kek_id

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def seal(self, plaintext: bytes, *, aad: bytes) -> Sealed:
        return Sealed(self._current.kek_id, self._current.encrypt(plaintext, aad=aad))

    def open(self, sealed: Sealed, *, aad: bytes, what: str) -> bytes:
        kek = self._by_id.get(sealed.kek_id)
        if kek is None:
            raise UnknownKek(what, kek_id=sealed.kek_id, known=self.ids)
        try:
            return kek.decrypt(sealed.ciphertext, aad=aad)
        except KeyDecryptionError:
            raise KeyDecryptionError(
                f"{what} does not decrypt under key-encryption key {kek.kek_id}"
                " (tampered data, or a ciphertext moved between rows)"
            ) from None

    def __repr__(self) -> str:
        return f"LocalKeks(current={self.current_id!r}, ids={self.ids!r})"


def as_sealer(kek: KeyEncryptionKey | Sealer) -> Sealer:
    """A sealer for `kek`: a single KEK is a provider with no previous keys."""
    if isinstance(kek, KeyEncryptionKey):
        return LocalKeks(kek)
    if not isinstance(kek, Sealer):  # pragma: no cover - a typing error caught at run time
        raise InvalidKeyEncryptionKey("not a key-encryption key or a sealer")
    return kek
