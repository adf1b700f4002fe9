"""Key rotation: re-encrypt every stored ciphertext that is not under the newest key.

Batches of rows are locked (``SKIP LOCKED``), re-encrypted in Python and written back in one
transaction each, so a worker is never blocked for longer than one batch and a run interrupted
half way leaves every row readable (each is under its old key or the new one). Running it again
picks up what is left; rows that no configured key opens are counted and left untouched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgqueue._crypto import FIELDS, Field, Keyring, key_id_in
from pgqueue._db.keys import KeyStore, StoredCiphertexts
from pgqueue.errors import DecryptionError, UnknownEncryptionKey

DEFAULT_BATCH = 500


@dataclass
class RotationReport:
    """What a rotation did (or, in a dry run, would do); counts and key ids only."""

    newest_key_id: str
    dry_run: bool
    jobs: int = 0
    rotated: Counter[str] = field(default_factory=Counter)
    from_key_ids: set[str] = field(default_factory=set)
    unreadable: Counter[str] = field(default_factory=Counter)
    #: Jobs with a ciphertext that is malformed or fails authentication under a configured key
    #: (altered, or copied from another job): no key will open it, so it is not "unreadable".
    damaged: set[int] = field(default_factory=set)
    remaining: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "newest_key_id": self.newest_key_id,
            "dry_run": self.dry_run,
            "jobs": self.jobs,
            "args": self.rotated["args"],
            "results": self.rotated["result"],
            "errors": self.rotated["error"],
            "progress_notes": self.rotated["progress_note"],
            "from_key_ids": sorted(self.from_key_ids),
            "unreadable": dict(sorted(self.unreadable.items())),
            "damaged_jobs": sorted(self.damaged),
            "remaining": self.remaining,
        }


def stale_counts(store: KeyStore, keyring: Keyring) -> dict[str, int]:
    """Jobs, and ciphertexts per column, not under the newest key."""
    with store.transaction():
        return store.count_stale_ciphertexts(keyring.newest.id)


def rotate(store: KeyStore, keyring: Keyring, *, batch: int = DEFAULT_BATCH, dry_run: bool = False,
           actor: str | None = None, source: str | None = None,
           on_batch: Callable[[int], None] | None = None) -> RotationReport:
    """Re-encrypt stale ciphertexts under ``keyring``'s newest key, auditing as it goes.

    Every batch that re-encrypts something writes a ``keys_rotated`` row with the counts so far
    (``"finished": false``) in its own transaction, so a run that is interrupted never leaves
    re-encrypted payloads without their audit row; the run ends with one ``keys_rotated`` row with
    the totals and what remains (``"finished": true``). ``source``, where the run came from, is in
    every row's detail when given.

    A dry run decrypts everything it would rotate (so it finds unreadable rows too) and writes nothing.
    """
    report = RotationReport(newest_key_id=keyring.newest.hex_id, dry_run=dry_run)
    after_id = 0
    while True:
        with store.transaction(rollback=dry_run):
            rows = store.lock_stale_ciphertexts(keyring.newest.id, after_id, batch)
            if not rows:
                break
            after_id = rows[-1].job_id
            updates = [update for row in rows if (update := _reencrypt(row, keyring, report)) is not None]
            report.jobs += len(updates)
            if updates and not dry_run:
                store.update_ciphertexts(updates)
                _record(store, report, actor, source, finished=False)
        if on_batch is not None:
            on_batch(len(rows))
    if not dry_run:
        report.remaining = stale_counts(store, keyring)
        with store.transaction():
            _record(store, report, actor, source, finished=True)
    return report


def _record(store: KeyStore, report: RotationReport, actor: str | None, source: str | None, *,
            finished: bool) -> None:
    detail = report.as_dict() | {"finished": finished} | ({"source": source} if source else {})
    store.record_key_rotation(actor or "", detail)


def _reencrypt(row: StoredCiphertexts, keyring: Keyring, report: RotationReport) -> StoredCiphertexts | None:
    fresh: dict[Field, bytes | None] = {}
    for name, blob in zip(FIELDS, (row.args, row.result, row.error, row.progress_note), strict=True):
        fresh[name] = None
        if blob is None or keyring.is_current(blob):
            continue
        old_id = key_id_in(blob).hex()
        try:
            plaintext = keyring.decrypt(blob, name, row.task)
        except UnknownEncryptionKey:
            report.unreadable[old_id] += 1
            continue
        except DecryptionError:
            report.damaged.add(row.job_id)
            continue
        fresh[name] = keyring.encrypt(plaintext, name, row.task)
        report.rotated[name] += 1
        report.from_key_ids.add(old_id)
    if not any(fresh.values()):
        return None
    return StoredCiphertexts(row.job_id, row.task, fresh["args"], fresh["result"], fresh["error"],
                             fresh["progress_note"])
