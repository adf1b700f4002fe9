"""The worker's side of encryption at rest: open a job's args before its handler runs, and seal the
result, error text and progress note it leaves behind, so an encrypted job's payloads never reach a
plaintext column.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pgqueue._crypto import Keyring, key_id_in
from pgqueue._db.jobs import Outcome
from pgqueue._payload import encode_json
from pgqueue.errors import EncryptionKeyMissing

if TYPE_CHECKING:
    from pgqueue.jobs import Job
    from pgqueue.tasks import Task


class PayloadSealer:
    """Decrypts args and encrypts outcomes for the jobs that need it.

    A job's outcome is sealed when its args were stored encrypted, when its task is declared
    ``encrypt=True``, or in compliance mode: whichever side asked for encryption wins.

    Raises:
        ConfigurationError: a configured key is malformed (at construction, so a worker with a
            broken key list refuses to start instead of failing every encrypted job).
        EncryptionKeyMissing: compliance mode is on and no key is configured.
    """

    def __init__(self, keys: tuple[str, ...], encrypt_all: bool) -> None:
        if encrypt_all and not keys:
            # Every job would fail at once: refuse to start, as enqueueing refuses in this setup.
            raise EncryptionKeyMissing("PGQUEUE_ENCRYPT_ALL is on but PGQUEUE_ENCRYPTION_KEYS is not set "
                                       "(see `pgqueue keys generate`)")
        self.keyring = Keyring(keys) if keys else None
        self.encrypt_all = encrypt_all

    def must_seal(self, job: Job, task: Task[..., Any] | None) -> bool:
        return job.encrypted or self.encrypt_all or (task is not None and task.encrypt)

    def open_args(self, job: Job, task: Task[..., Any] | None) -> None:
        """Replace ``job.args`` with the decrypted args (no-op for plaintext jobs).

        Raises:
            EncryptionKeyMissing: the job must be encrypted and this worker has no key.
            DecryptionError: the args were sealed with a key this worker lacks, or were altered.
        """
        if not self.must_seal(job, task):
            return
        sealed = job._sealed_args
        if self.keyring is None:
            what = (f"its args are encrypted with key id {key_id_in(sealed).hex()}" if sealed is not None
                    else "its task or compliance mode requires encryption")
            raise EncryptionKeyMissing(
                f"job {job.id} cannot run here: {what}, but this worker has no PGQUEUE_ENCRYPTION_KEYS; "
                f"configure the key(s) on the workers, then `pgqueue jobs retry {job.id}`")
        if sealed is not None:
            job.args = json.loads(self.keyring.decrypt(sealed, "args", job.task))

    def seal(self, job: Job, task: Task[..., Any] | None, outcome: Outcome) -> Outcome:
        """The outcome to store: for a sealed job, the result, the error text and the progress note
        only as ciphertext."""
        if self.keyring is None or not self.must_seal(job, task):
            return outcome
        result_encrypted = error_encrypted = None
        error = outcome.error
        if outcome.result is not None:
            result_encrypted = self.keyring.encrypt(outcome.result.encode("utf-8"), "result", job.task)
        if outcome.error is not None:
            error_encrypted = self.keyring.encrypt(outcome.error.encode("utf-8"), "error", job.task)
            # The type stays readable: reports, the audit trail's error_type and alerting need it.
            error = encode_json({"type": json.loads(outcome.error).get("type"), "encrypted": True})
        note_encrypted = outcome.progress_note_encrypted
        if outcome.progress_note is not None:  # the ProgressBook seals these already: never store one in plaintext
            note_encrypted = self.keyring.encrypt(outcome.progress_note.encode("utf-8"), "progress_note", job.task)
        return replace(outcome, result=None, result_encrypted=result_encrypted, error=error,
                       error_encrypted=error_encrypted, progress_note=None, progress_note_encrypted=note_encrypted)
