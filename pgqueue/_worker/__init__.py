"""The worker: claim loop, executor, heartbeat, supervisor."""
