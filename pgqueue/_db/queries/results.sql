-- Reading a job's outcome for App.result: the result or the error, and their ciphertext when the
-- job is encrypted (the application holds the keys and opens them).

-- name: get_outcome
SELECT id, task, state, result, result_encrypted, last_error, error_encrypted
FROM pgqueue.jobs WHERE id = %(id)s;
