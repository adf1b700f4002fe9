"""AES-256-GCM payload encryption: keys, the ciphertext format, and the keyring that picks keys.

A ciphertext is self-describing, so any key in the ring can open it and rotation needs no
bookkeeping outside the row::

    version (1 byte) | key id (8 bytes) | nonce (12 bytes) | AES-GCM ciphertext + tag (16 bytes)

The key id is the first 8 bytes of sha256(key): it names a key without revealing it. The
associated data binds each ciphertext to its header, the column it lives in (args, result,
error or progress note) and the job's task name, so a ciphertext copied into another column or onto another
task's job fails authentication instead of being fed to the wrong handler.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pgqueue.errors import ConfigurationError, DecryptionError, EncryptionKeyMissing, UnknownEncryptionKey

VERSION = 1
KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 12
HEADER_BYTES = 1 + KEY_ID_BYTES + NONCE_BYTES
_TAG_BYTES = 16
# b64decode silently drops characters outside the alphabet; a key with a stray one is refused.
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]+={0,2}")

if TYPE_CHECKING:
    # cryptography is imported by the first key parsed: a worker or an app without keys never loads it.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

Field = Literal["args", "result", "error", "progress_note"]
FIELDS: tuple[Field, ...] = ("args", "result", "error", "progress_note")


def generate_key() -> str:
    """A new random key in the form ``PGQUEUE_ENCRYPTION_KEYS`` takes (url-safe base64 of 32 bytes)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id_of(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()[:KEY_ID_BYTES]


def key_id_in(ciphertext: bytes) -> bytes:
    """The id of the key that sealed ``ciphertext`` (read from its header, nothing decrypted)."""
    return bytes(ciphertext[1:1 + KEY_ID_BYTES])


@dataclass(frozen=True)
class Key:
    id: bytes
    aead: AESGCM = field(repr=False)

    @property
    def hex_id(self) -> str:
        return self.id.hex()


def parse_key(text: str, position: int) -> Key:
    """Decode one configured key; the error names its position, never its value."""
    where = f"PGQUEUE_ENCRYPTION_KEYS key #{position} (counting from 1, newest first)"
    raw = text.strip()
    try:
        # Padding is optional on input: some secret stores strip the trailing '='.
        secret = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != KEY_BYTES or not _KEY_TEXT.fullmatch(raw):
        raise ConfigurationError(
            f"{where} is not url-safe base64 of {KEY_BYTES} bytes; generate one with `pgqueue keys generate`")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return Key(id=key_id_of(secret), aead=AESGCM(secret))


def _associated_data(header: bytes, field_name: Field, task: str) -> bytes:
    # Length-prefixed so no (field, task) pair can collide with another by shifting a separator.
    encoded_task = task.encode("utf-8")
    return b"".join((b"pgqueue", header, field_name.encode("ascii"), len(encoded_task).to_bytes(4, "big"),
                     encoded_task))


class Keyring:
    """The configured keys, newest first: the newest seals, any of them opens.

    Args:
        keys: url-safe base64 keys, newest first (``Settings.encryption_keys``).

    Raises:
        ConfigurationError: a key is malformed (the message names its position, never the key).
        EncryptionKeyMissing: no key is configured.
    """

    def __init__(self, keys: tuple[str, ...] | list[str]) -> None:
        if not keys:
            raise EncryptionKeyMissing(
                "no encryption key configured: set PGQUEUE_ENCRYPTION_KEYS (see `pgqueue keys generate`)")
        parsed = [parse_key(text, position) for position, text in enumerate(keys, start=1)]
        self.newest = parsed[0]
        # The first occurrence wins: a key listed twice is harmless.
        self._by_id: dict[bytes, Key] = {}
        for key in parsed:
            self._by_id.setdefault(key.id, key)

    @property
    def key_ids(self) -> list[str]:
        return [key.hex_id for key in self._by_id.values()]

    def encrypt(self, plaintext: bytes, field_name: Field, task: str) -> bytes:
        header = bytes([VERSION]) + self.newest.id + os.urandom(NONCE_BYTES)
        return header + self.newest.aead.encrypt(header[-NONCE_BYTES:], plaintext,
                                                 _associated_data(header, field_name, task))

    def decrypt(self, ciphertext: bytes, field_name: Field, task: str) -> bytes:
        """Open a ciphertext sealed by any key in the ring.

        Raises:
            UnknownEncryptionKey: it was sealed with a key this ring does not hold.
            DecryptionError: it is malformed, altered, or belongs to another field or task.
        """
        blob = bytes(ciphertext)
        if len(blob) < HEADER_BYTES + _TAG_BYTES or blob[0] != VERSION:
            raise DecryptionError(
                f"the {field_name} ciphertext is not in pgqueue's format (version byte "
                f"{blob[0] if blob else 'missing'}, {len(blob)} bytes): it was altered or written by something else")
        key_id = key_id_in(blob)
        key = self._by_id.get(key_id)
        if key is None:
            raise UnknownEncryptionKey(
                f"the {field_name} payload was encrypted with key id {key_id.hex()}, which is not in "
                "PGQUEUE_ENCRYPTION_KEYS: add that key to the list (after the newest) on this process, "
                "then `pgqueue jobs retry ID`")
        from cryptography.exceptions import InvalidTag  # loaded already: the key was parsed

        header = blob[:HEADER_BYTES]
        try:
            return key.aead.decrypt(header[-NONCE_BYTES:], blob[HEADER_BYTES:],
                                    _associated_data(header, field_name, task))
        except InvalidTag:
            raise DecryptionError(
                f"the {field_name} ciphertext under key id {key_id.hex()} failed authentication for task "
                f"{task!r}: it was altered, or copied from another column or another task's job") from None

    def is_current(self, ciphertext: bytes) -> bool:
        return key_id_in(ciphertext) == self.newest.id
