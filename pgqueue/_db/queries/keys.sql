-- Encryption at rest: the ciphertexts `pgqueue keys rotate` re-encrypts under the newest key,
-- and the audit row each run leaves.

-- name: count_stale_ciphertexts
-- Ciphertexts not under the newest key (bytes 2-9 of each are its key id): what `keys rotate` has
-- left to do. A full scan, fine for an operator's command.
SELECT count(*) AS jobs,
       count(*) FILTER (WHERE substring(args_encrypted FROM 2 FOR 8) <> %(key_id)s) AS args,
       count(*) FILTER (WHERE substring(result_encrypted FROM 2 FOR 8) <> %(key_id)s) AS results,
       count(*) FILTER (WHERE substring(error_encrypted FROM 2 FOR 8) <> %(key_id)s) AS errors,
       count(*) FILTER (WHERE substring(progress_note_encrypted FROM 2 FOR 8) <> %(key_id)s) AS progress_notes
FROM pgqueue.jobs
WHERE substring(args_encrypted FROM 2 FOR 8) <> %(key_id)s
   OR substring(result_encrypted FROM 2 FOR 8) <> %(key_id)s
   OR substring(error_encrypted FROM 2 FOR 8) <> %(key_id)s
   OR substring(progress_note_encrypted FROM 2 FOR 8) <> %(key_id)s;

-- name: lock_stale_ciphertexts
-- One batch for `keys rotate`, in id order after a cursor so a row that cannot be re-encrypted is
-- passed over, not fetched forever. SKIP LOCKED: a row a worker is claiming or acking right now is
-- left for the next run (the command reports what remains). Running jobs are included: their
-- worker already holds the plaintext args, and its ack and progress writes wait for this lock
-- (a note it writes afterwards replaces the rotated one, under the key that worker has).
SELECT id, task, args_encrypted, result_encrypted, error_encrypted, progress_note_encrypted
FROM pgqueue.jobs
WHERE id > %(after_id)s
  AND (substring(args_encrypted FROM 2 FOR 8) <> %(key_id)s
       OR substring(result_encrypted FROM 2 FOR 8) <> %(key_id)s
       OR substring(error_encrypted FROM 2 FOR 8) <> %(key_id)s
       OR substring(progress_note_encrypted FROM 2 FOR 8) <> %(key_id)s)
ORDER BY id
LIMIT %(limit)s
FOR NO KEY UPDATE SKIP LOCKED;

-- name: update_ciphertexts
-- Writes back a batch re-encrypted under the newest key; a NULL keeps the column as it was.
UPDATE pgqueue.jobs AS j
SET args_encrypted = COALESCE(u.args_encrypted, j.args_encrypted),
    result_encrypted = COALESCE(u.result_encrypted, j.result_encrypted),
    error_encrypted = COALESCE(u.error_encrypted, j.error_encrypted),
    progress_note_encrypted = COALESCE(u.progress_note_encrypted, j.progress_note_encrypted)
FROM unnest(%(ids)b::bigint[], %(args_encrypted)b::bytea[], %(results_encrypted)b::bytea[],
            %(errors_encrypted)b::bytea[], %(progress_notes_encrypted)b::bytea[])
    AS u(id, args_encrypted, result_encrypted, error_encrypted, progress_note_encrypted)
WHERE j.id = u.id;

-- name: record_key_rotation
-- One row per `pgqueue keys rotate` run: counts and key ids only, never payloads or keys.
INSERT INTO pgqueue.job_events (job_id, event, actor, detail)
VALUES (NULL, 'keys_rotated', %(actor)s, %(detail)s::jsonb);
