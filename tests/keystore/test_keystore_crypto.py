"""SecretBytes and the key-encryption key: loading, fingerprints, sealing root keys."""

from __future__ import annotations

import base64
import hashlib
import os
import pickle
import stat
import threading
from pathlib import Path

import pytest

from keystore import InvalidKeyEncryptionKey, KeyEncryptionKey, KeystoreError, SecretBytes
from keystore.crypto import NONCE_BYTES, TAG_BYTES
from keystore.errors import KeyDecryptionError

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


def test_secret_bytes_never_show_their_content() -> None:
    """repr and str of SecretBytes give the length only, never the bytes in any encoding."""
    secret = SecretBytes(b"hunter2-hunter2-hunter2")

    shown = [repr(secret), str(secret), f"{secret}", f"{[secret]}"]

    for text in shown:
        assert "hunter2" not in text
        assert b"hunter2".hex() not in text
        assert "23 bytes redacted" in text


def test_secret_bytes_reveal_gives_the_bytes_back() -> None:
    """reveal() is the one way to the content."""
    secret = SecretBytes(b"\x00\x01secret")

    revealed = secret.reveal()

    assert revealed == b"\x00\x01secret"
    assert len(secret) == 8


def test_secret_bytes_compare_by_content() -> None:
    """Equal content compares equal (in constant time), other content or types do not."""
    secret = SecretBytes(b"abc")

    same, other = SecretBytes(b"abc"), SecretBytes(b"abd")

    assert secret == same
    assert secret != other
    assert secret != b"abc"


def test_secrets_refuse_pickling() -> None:
    """SecretBytes and KeyEncryptionKey cannot be pickled into caches or queues by accident."""
    secret, kek = SecretBytes(b"abc"), KeyEncryptionKey(KEY)

    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        pickle.dumps(kek)


def test_secret_bytes_wrap_bytes_only() -> None:
    """Wrapping a str is a programming error, caught at once."""
    value: object = "abc"

    with pytest.raises(TypeError):
        SecretBytes(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        KEY_B64,
        base64.urlsafe_b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        f"  {KEY_B64}\n",
    ],
)
def test_kek_from_base64_accepts_standard_urlsafe_unpadded_and_padded_by_whitespace(
    text: str,
) -> None:
    """Standard and URL-safe base64, with or without padding and surrounding whitespace, load."""
    expected = KeyEncryptionKey(KEY)

    kek = KeyEncryptionKey.from_base64(text)

    assert kek.kek_id == expected.kek_id


@pytest.mark.parametrize("text", ["not base64 at all!", "AAAA*AAA", "é" * 44, "", "   "])
def test_kek_from_base64_rejects_garbage_with_a_clear_error(text: str) -> None:
    """Input that is not base64 is refused, saying so, without echoing the input."""
    with pytest.raises(InvalidKeyEncryptionKey) as caught:
        KeyEncryptionKey.from_base64(text)

    message = str(caught.value)
    assert "base64" in message or "empty" in message
    if text.strip():
        assert text.strip() not in message


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_kek_of_the_wrong_length_is_rejected(length: int) -> None:
    """Anything but 32 bytes is refused, naming the expected and actual length."""
    text = base64.b64encode(b"k" * length).decode()

    with pytest.raises(InvalidKeyEncryptionKey) as caught:
        KeyEncryptionKey.from_base64(text) if length else KeyEncryptionKey(b"")

    assert "32 bytes" in str(caught.value)
    assert f"got {length}" in str(caught.value)


def test_invalid_kek_is_both_a_keystore_error_and_a_value_error() -> None:
    """Configuration code can catch it as KeystoreError or as ValueError."""
    with pytest.raises(KeystoreError):
        KeyEncryptionKey(b"short")

    with pytest.raises(ValueError, match="32 bytes"):
        KeyEncryptionKey(b"short")


def test_kek_id_is_a_stable_eight_hex_digit_fingerprint() -> None:
    """The same key always has the same 8-hex-digit id; different keys have different ids."""
    first, again, other = KeyEncryptionKey(KEY), KeyEncryptionKey(KEY), KeyEncryptionKey.generate()

    ids = (first.kek_id, again.kek_id, other.kek_id)

    assert all(len(kek_id) == 8 and int(kek_id, 16) >= 0 for kek_id in ids)
    assert first.kek_id == again.kek_id
    assert first.kek_id != other.kek_id


def test_kek_id_is_not_a_plain_hash_or_prefix_of_the_key() -> None:
    """The fingerprint is keyed, so it matches no unkeyed digest or encoding of the key."""
    kek = KeyEncryptionKey(KEY)

    unkeyed = [
        KEY.hex(),
        hashlib.sha256(KEY).hexdigest(),
        hashlib.blake2b(KEY).hexdigest(),
        hashlib.blake2b(KEY, digest_size=4).hexdigest(),
        base64.b16encode(KEY).decode().lower(),
    ]

    assert all(not digest.startswith(kek.kek_id) for digest in unkeyed)


def test_kek_repr_and_str_show_only_the_fingerprint() -> None:
    """repr/str of the KEK name its id and never the key in raw, hex or base64 form."""
    kek = KeyEncryptionKey(KEY)

    shown = [repr(kek), str(kek)]

    for text in shown:
        assert kek.kek_id in text
        assert KEY_B64 not in text and KEY.hex() not in text and str(KEY) not in text


def test_load_prefers_the_value_then_the_file_then_the_data_dir(tmp_path: Path) -> None:
    """An explicit value wins over a file, which wins over the data directory."""
    other = KeyEncryptionKey.generate()
    key_file = tmp_path / "kek.b64"
    key_file.write_text(base64.b64encode(b"f" * 32).decode())
    key_file.chmod(0o600)
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)

    from_value = KeyEncryptionKey.load(value=KEY_B64, file=str(key_file), data_dir=data_dir)
    from_file = KeyEncryptionKey.load(value=None, file=str(key_file), data_dir=data_dir)

    assert from_value.kek_id == KeyEncryptionKey(KEY).kek_id
    assert from_file.kek_id == KeyEncryptionKey(b"f" * 32).kek_id
    assert from_file.kek_id != other.kek_id
    assert not (data_dir / "kek").exists()


def test_load_reads_a_base64_file_such_as_a_mounted_secret(tmp_path: Path) -> None:
    """A file holding the base64 key (trailing newline allowed) loads."""
    key_file = tmp_path / "kek"
    key_file.write_text(KEY_B64 + "\n")
    key_file.chmod(0o440)  # a Kubernetes Secret volume shared with the pod's fsGroup

    kek = KeyEncryptionKey.load(file=str(key_file))

    assert kek.kek_id == KeyEncryptionKey(KEY).kek_id


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666])
def test_load_refuses_a_kek_file_every_user_may_read_or_write(tmp_path: Path, mode: int) -> None:
    """docs/security.md promised it; only the generated data-dir file was checked (red team):
    a TOKENSVC_KEK_FILE open to every user of the host is refused, naming the fix."""
    key_file = tmp_path / "kek"
    key_file.write_text(KEY_B64 + "\n")
    key_file.chmod(mode)

    with pytest.raises(InvalidKeyEncryptionKey, match="chmod o-rwx") as refused:
        KeyEncryptionKey.load(file=str(key_file))

    assert KEY_B64 not in str(refused.value)


def test_load_names_a_missing_or_malformed_file(tmp_path: Path) -> None:
    """A missing file or one without a valid key fails with the path in the message."""
    missing, malformed = tmp_path / "absent", tmp_path / "bad"
    malformed.write_text("definitely not a key")
    malformed.chmod(0o600)

    with pytest.raises(InvalidKeyEncryptionKey, match="does not exist") as absent_error:
        KeyEncryptionKey.load(file=str(missing))
    with pytest.raises(InvalidKeyEncryptionKey, match="base64") as bad_error:
        KeyEncryptionKey.load(file=str(malformed))

    assert str(missing) in str(absent_error.value)
    assert str(malformed) in str(bad_error.value)


def test_load_without_any_source_fails() -> None:
    """With no value, file or data directory there is no KEK, and load says so."""
    with pytest.raises(InvalidKeyEncryptionKey, match="no key-encryption key configured"):
        KeyEncryptionKey.load(value=None, file=None, data_dir=None)


def test_embedded_mode_creates_the_kek_file_with_mode_0600(data_dir: Path) -> None:
    """The first load in the data directory creates `kek` readable by the owner only."""
    kek = KeyEncryptionKey.load(data_dir=data_dir)

    path = data_dir / "kek"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KeyEncryptionKey.load(file=str(path)).kek_id == kek.kek_id
    assert sorted(p.name for p in data_dir.iterdir()) == ["kek"]


def test_embedded_mode_reuses_the_kek_on_the_next_load(data_dir: Path) -> None:
    """A second load (a restart) reads the same key instead of making a new one."""
    first = KeyEncryptionKey.load(data_dir=data_dir)
    content = (data_dir / "kek").read_bytes()

    second = KeyEncryptionKey.load(data_dir=data_dir)

    assert second.kek_id == first.kek_id
    assert (data_dir / "kek").read_bytes() == content


def test_embedded_mode_creates_the_kek_file_even_under_a_permissive_umask(data_dir: Path) -> None:
    """The mode is 0600 whatever the process umask."""
    previous = os.umask(0)
    try:
        KeyEncryptionKey.load(data_dir=data_dir)
    finally:
        os.umask(previous)

    assert stat.S_IMODE((data_dir / "kek").stat().st_mode) == 0o600


def test_embedded_mode_refuses_a_kek_file_others_can_read(data_dir: Path) -> None:
    """Like ssh with private keys, a group- or world-readable KEK file is refused, with the fix."""
    KeyEncryptionKey.load(data_dir=data_dir)
    (data_dir / "kek").chmod(0o644)

    with pytest.raises(InvalidKeyEncryptionKey, match="chmod 600"):
        KeyEncryptionKey.load(data_dir=data_dir)


def test_embedded_mode_names_a_data_dir_it_cannot_write(tmp_path: Path) -> None:
    """A missing data directory is a clear configuration error, not an OSError traceback."""
    missing = tmp_path / "absent"

    with pytest.raises(InvalidKeyEncryptionKey, match="cannot create") as caught:
        KeyEncryptionKey.load(data_dir=missing)

    assert str(missing / "kek") in str(caught.value)


def test_processes_starting_together_agree_on_one_kek(data_dir: Path) -> None:
    """Concurrent first loads all end up with the key that was written first."""
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        ids.append(KeyEncryptionKey.load(data_dir=data_dir).kek_id)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(ids) == 8
    assert len(set(ids)) == 1
    assert sorted(p.name for p in data_dir.iterdir()) == ["kek"]


def test_encrypt_then_decrypt_with_the_same_aad_round_trips() -> None:
    """Sealed bytes open again: nonce, then ciphertext and tag, random nonce every time."""
    kek = KeyEncryptionKey(KEY)

    first = kek.encrypt(b"root key bytes", aad=b"key-1")
    second = kek.encrypt(b"root key bytes", aad=b"key-1")

    assert kek.decrypt(first, aad=b"key-1") == b"root key bytes"
    assert len(first) == NONCE_BYTES + len(b"root key bytes") + TAG_BYTES
    assert first[:NONCE_BYTES] != second[:NONCE_BYTES]
    assert b"root key bytes" not in first


def test_decrypt_under_another_kek_fails() -> None:
    """A ciphertext opens only under the KEK that sealed it."""
    sealed = KeyEncryptionKey(KEY).encrypt(b"root key bytes", aad=b"key-1")

    with pytest.raises(KeyDecryptionError):
        KeyEncryptionKey.generate().decrypt(sealed, aad=b"key-1")


def test_decrypt_with_another_aad_fails() -> None:
    """A ciphertext bound to one key id does not open as another's."""
    kek = KeyEncryptionKey(KEY)
    sealed = kek.encrypt(b"root key bytes", aad=b"key-1")

    with pytest.raises(KeyDecryptionError):
        kek.decrypt(sealed, aad=b"key-2")


@pytest.mark.parametrize("position", [0, NONCE_BYTES, -1])
def test_decrypt_of_tampered_ciphertext_fails(position: int) -> None:
    """Flipping one bit in the nonce, the body or the tag makes decryption fail."""
    kek = KeyEncryptionKey(KEY)
    sealed = bytearray(kek.encrypt(b"root key bytes", aad=b"key-1"))
    sealed[position] ^= 0x01

    with pytest.raises(KeyDecryptionError):
        kek.decrypt(bytes(sealed), aad=b"key-1")


def test_decrypt_of_truncated_ciphertext_fails() -> None:
    """Input shorter than nonce plus tag fails cleanly, not with an index error."""
    kek = KeyEncryptionKey(KEY)

    with pytest.raises(KeyDecryptionError, match="truncated"):
        kek.decrypt(b"\x00" * (NONCE_BYTES + TAG_BYTES - 1), aad=b"key-1")


def test_derived_keys_are_stable_per_purpose_and_reveal_nothing_of_the_kek() -> None:
    raw = bytes(range(32))
    kek = KeyEncryptionKey(raw)
    lockout = kek.derive(b"lockout")
    assert len(lockout) == 32
    assert lockout == KeyEncryptionKey(raw).derive(b"lockout")  # every replica agrees
    assert lockout != kek.derive(b"other purpose")
    assert lockout != KeyEncryptionKey(bytes(32)).derive(b"lockout")
    assert raw not in lockout and lockout != raw
    with pytest.raises(ValueError, match="needs a purpose"):
        kek.derive(b"")
