"""pgqueue keys generate|rotate: encryption keys for payloads at rest.

Keys live only in ``PGQUEUE_ENCRYPTION_KEYS`` (newest first), never in the database; the database
holds ciphertexts that name their key by id (the first 8 bytes of its sha256).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from pgqueue import _key_rotation
from pgqueue._crypto import Keyring, generate_key
from pgqueue._db.keys import KeyStore
from pgqueue.cli._admin import SOURCE, actor, open_store
from pgqueue.cli._context import DsnOption, JsonOption, fail, usage_error
from pgqueue.cli._output import print_json, stderr_progress
from pgqueue.settings import Settings

app = typer.Typer(help="Encryption keys: generate one, rotate stored payloads to the newest.", no_args_is_help=True)


@app.command("generate")
def generate_command() -> None:
    """Print a new random key (url-safe base64 of 32 bytes) on stdout.

    Example: export PGQUEUE_ENCRYPTION_KEYS="$(pgqueue keys generate),$PGQUEUE_ENCRYPTION_KEYS"
    """
    print(generate_key())
    print('pgqueue: prepend it (newest first): PGQUEUE_ENCRYPTION_KEYS="<new key>,$PGQUEUE_ENCRYPTION_KEYS", '
          "deploy it to every worker, then producers, then run `pgqueue keys rotate`", file=sys.stderr)


@app.command("rotate")
def rotate_command(
    batch: Annotated[int, typer.Option("--batch", help="Jobs re-encrypted per transaction (1-10000).")] = (
        _key_rotation.DEFAULT_BATCH),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count (and test-decrypt) what would be rotated; "
                                                            "write nothing.")] = False,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Re-encrypt every stored args, result, error and progress note ciphertext not under the newest key.

    Uses PGQUEUE_ENCRYPTION_KEYS: the first key is the target, the others open older ciphertexts.
    Safe to re-run and to run while workers are busy; audited as `keys_rotated` rows (one per batch, and a summary).
    Exits 1 when some ciphertexts are under a key that is not configured, or damaged (they are left unchanged).
    """
    if not 1 <= batch <= 10_000:
        usage_error(f"--batch {batch} must be between 1 and 10000")
    keyring = Keyring(Settings.from_env().encryption_keys)
    with open_store(dsn, KeyStore) as store:
        total = _key_rotation.stale_counts(store, keyring)["jobs"]
        with stderr_progress(TextColumn("re-encrypting"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn()) as progress:
            bar = progress.add_task("rotate", total=total)
            report = _key_rotation.rotate(store, keyring, batch=batch, dry_run=dry_run, actor=actor(),
                                          source=SOURCE, on_batch=lambda rows: progress.advance(bar, rows))
    summary = report.as_dict()
    if json_output:
        print_json(summary)
    else:
        verb = "would re-encrypt" if dry_run else "re-encrypted"
        print(f"{verb} {summary['args']} args, {summary['results']} results, {summary['errors']} errors and "
              f"{summary['progress_notes']} progress notes on {summary['jobs']} jobs to key id "
              f"{report.newest_key_id}")
        if not dry_run:
            left = report.remaining.get("jobs", 0)
            print(f"{left} jobs still hold ciphertexts under older keys" if left else
                  "every stored ciphertext is under the newest key")
    problems = []
    if report.unreadable:
        ids = ", ".join(f"{key_id} ({count})" for key_id, count in sorted(report.unreadable.items()))
        problems.append(f"{sum(report.unreadable.values())} ciphertexts could not be opened with the configured "
                        f"keys and were left unchanged; key ids: {ids}. Add those keys (after the newest) and run "
                        "it again")
    if report.damaged:
        shown = ", ".join(str(job_id) for job_id in sorted(report.damaged)[:10])
        more = f" and {len(report.damaged) - 10} more" if len(report.damaged) > 10 else ""
        problems.append(f"{len(report.damaged)} jobs hold a ciphertext that is malformed or fails authentication "
                        f"(altered, or copied from another job) and were left unchanged: jobs {shown}{more}")
    if problems:
        fail("; ".join(problems))
