"""The ciphertext format and the keyring: round trips, bindings, key ids, malformed keys, rotation order."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pgqueue._crypto import HEADER_BYTES, VERSION, Keyring, generate_key, key_id_in
from pgqueue.errors import ConfigurationError, DecryptionError, EncryptionKeyMissing, UnknownEncryptionKey

OLD, NEW = generate_key(), generate_key()


def key_id(key: str) -> bytes:
    return hashlib.sha256(base64.urlsafe_b64decode(key)).digest()[:8]


def test_generated_keys_are_url_safe_base64_of_32_random_bytes() -> None:
    keys = {generate_key() for _ in range(20)}

    assert len(keys) == 20
    for key in keys:
        assert len(base64.urlsafe_b64decode(key)) == 32


def test_a_round_trip_returns_the_plaintext_and_the_ciphertext_hides_it() -> None:
    ring = Keyring((NEW,))
    sealed = ring.encrypt(b'{"ssn":"123-45-6789"}', "args", "send-email")

    assert b"123-45-6789" not in sealed
    assert ring.decrypt(sealed, "args", "send-email") == b'{"ssn":"123-45-6789"}'


def test_the_ciphertext_names_its_version_and_key_id_and_uses_a_fresh_nonce() -> None:
    ring = Keyring((NEW,))
    first, second = ring.encrypt(b"x", "args", "t"), ring.encrypt(b"x", "args", "t")

    assert first[0] == VERSION
    assert key_id_in(first) == key_id(NEW)
    assert first[9:HEADER_BYTES] != second[9:HEADER_BYTES]  # the nonce
    assert first != second


@pytest.mark.parametrize(("field", "task"), [("result", "send-email"), ("error", "send-email"), ("args", "other")])
def test_a_ciphertext_moved_to_another_field_or_task_fails_authentication(field: str, task: str) -> None:
    ring = Keyring((NEW,))
    sealed = ring.encrypt(b"secret", "args", "send-email")

    with pytest.raises(DecryptionError, match=key_id(NEW).hex()) as raised:
        ring.decrypt(sealed, field, task)  # type: ignore[arg-type]
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(("sealed_as", "opened_as"), [("progress_note", "result"), ("args", "progress_note")])
def test_a_progress_note_ciphertext_and_a_payload_ciphertext_cannot_stand_in_for_each_other(
        sealed_as: str, opened_as: str) -> None:
    ring = Keyring((NEW,))
    sealed = ring.encrypt(b"letter for Jane Doe", sealed_as, "send-letter")  # type: ignore[arg-type]

    assert ring.decrypt(sealed, sealed_as, "send-letter") == b"letter for Jane Doe"  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        ring.decrypt(sealed, opened_as, "send-letter")  # type: ignore[arg-type]


def test_an_altered_ciphertext_or_header_fails_authentication() -> None:
    ring = Keyring((NEW, OLD))
    sealed = bytearray(ring.encrypt(b"secret", "args", "t"))
    body = bytearray(sealed)
    body[-1] ^= 1
    nonce = bytearray(sealed)
    nonce[12] ^= 1

    for altered in (body, nonce):
        with pytest.raises(DecryptionError, match="failed authentication"):
            ring.decrypt(bytes(altered), "args", "t")
    with pytest.raises(DecryptionError, match="not in pgqueue's format"):
        ring.decrypt(b"\x02" + bytes(sealed[1:]), "args", "t")
    with pytest.raises(DecryptionError, match="not in pgqueue's format"):
        ring.decrypt(b"short", "args", "t")


def test_an_unknown_key_id_names_the_key_id_and_the_fix() -> None:
    sealed = Keyring((OLD,)).encrypt(b"secret", "args", "t")

    with pytest.raises(UnknownEncryptionKey, match="PGQUEUE_ENCRYPTION_KEYS") as raised:
        Keyring((NEW,)).decrypt(sealed, "args", "t")
    assert key_id(OLD).hex() in str(raised.value)
    assert OLD not in str(raised.value)
    assert "secret" not in str(raised.value)


def test_the_newest_key_seals_and_every_listed_key_opens() -> None:
    old_sealed = Keyring((OLD,)).encrypt(b"from before", "result", "t")
    rotated = Keyring((NEW, OLD))

    assert rotated.decrypt(old_sealed, "result", "t") == b"from before"
    assert not rotated.is_current(old_sealed)
    fresh = rotated.encrypt(b"now", "result", "t")
    assert key_id_in(fresh) == key_id(NEW)
    assert rotated.is_current(fresh)
    assert Keyring((NEW,)).decrypt(fresh, "result", "t") == b"now"


def test_keys_without_padding_are_accepted() -> None:
    sealed = Keyring((NEW,)).encrypt(b"x", "args", "t")

    assert Keyring((NEW.rstrip("="),)).decrypt(sealed, "args", "t") == b"x"


@pytest.mark.parametrize("bad", [
    "not-base64!", base64.urlsafe_b64encode(b"short").decode(), base64.urlsafe_b64encode(b"x" * 33).decode(),
    "k1", base64.urlsafe_b64encode(b"k" * 32).decode()[:-4] + "+/+/",  # standard, not url-safe, alphabet
])
def test_a_malformed_key_is_a_configuration_error_naming_its_position_and_not_its_value(bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"key #2 .*pgqueue keys generate") as raised:
        Keyring((NEW, bad))
    assert bad not in str(raised.value)


def test_an_empty_key_list_is_encryption_key_missing() -> None:
    with pytest.raises(EncryptionKeyMissing, match="PGQUEUE_ENCRYPTION_KEYS"):
        Keyring(())
