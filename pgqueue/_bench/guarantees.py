"""``guarantees``: what each optional guarantee costs in processing throughput.

The same backlog of no-op jobs is drained at one setting by workers serving the queue by name
(``steps.drain_limited``, the ``limits`` scenario's drain): plain (the baseline); encrypted (the
jobs written by ``enqueue_many`` under a key, the worker in compliance mode: args are decrypted;
the no-op returns no result, so none is encrypted); a queue concurrency limit above the workers'
slots and a rate limit far above the rate reached (neither binds: what is left is the limited
claim's cost). Each variant gets a fresh database (VACUUM ANALYZE after the prefill, as
autovacuum would) and its ratio to the baseline of the same repetition. The audit trail is always
on: pgqueue has no mode without it, so every variant, the baseline included, pays for it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple

from pgqueue._bench.context import Context, Unit
from pgqueue._bench.stats import Sample
from pgqueue._bench.steps import bench_app, drain_limited, fill_paused
from pgqueue._crypto import generate_key
from pgqueue._db.bench import bench_probe
from pgqueue.errors import PgqueueError
from pgqueue.settings import Settings

#: Starts per second the rate limit allows: far above what any worker here reaches, so it never binds.
RATE_LIMIT = 1_000_000
#: Running jobs the concurrency limit allows: above every setting's slots (2 x 50), so it never binds.
CONCURRENCY_LIMIT = 10_000


@dataclass(frozen=True)
class Setting:
    processes: int
    concurrency: int
    #: How many of ``guarantees_jobs`` backlogs to drain: a fast setting needs more to time well.
    scale: int

    @property
    def label(self) -> str:
        return f"p{self.processes}_c{self.concurrency}" if self.processes > 1 else f"c{self.concurrency}"


#: The fixed setting of the issue (1 x 10) and the best P x C of the process scenario (2 x 50).
SETTINGS = (Setting(1, 10, 1), Setting(2, 50, 3))


class Variant(NamedTuple):
    name: str
    encrypted: bool
    concurrency_limit: int | None
    rate_limit: tuple[int, int] | None


VARIANTS = (
    Variant("baseline", False, None, None),
    Variant("encrypted", True, None, None),
    Variant("concurrency_limited", False, CONCURRENCY_LIMIT, None),
    Variant("rate_limited", False, None, (RATE_LIMIT, 1)),
)

NOTE = (f"no-op jobs drained by workers serving the queue by name, VACUUM ANALYZE after the prefill; encrypted = "
        "keys set and encrypt_all (args encrypted and decrypted; the no-op has no result to encrypt); "
        f"concurrency_limited = queue limit {CONCURRENCY_LIMIT:,} (never binds); rate_limited = {RATE_LIMIT:,}/s "
        "(never binds); ratio = variant / baseline of the same repetition. The audit trail cannot be switched off "
        "(no lean mode): the baseline pays for it too")


def _variant_rate(ctx: Context, setting: Setting, variant: Variant) -> tuple[float, str | None]:
    n = ctx.sizes.guarantees_jobs * setting.scale
    key = generate_key() if variant.encrypted else None
    with ctx.databases.fresh() as dsn:
        settings = Settings(dsn=dsn, encryption_keys=(key,), encrypt_all=True) if key else None
        fill_paused(ctx, dsn, n, app=bench_app(dsn, settings), analyze=True)
        ctx.status(f"{variant.name}: draining {n:,} jobs")
        value, note = drain_limited(ctx, dsn, concurrency_limit=variant.concurrency_limit,
                                    rate_limit=variant.rate_limit, target=n, processes=setting.processes,
                                    concurrency=setting.concurrency, encryption_key=key)
        if key:
            with bench_probe(dsn) as probe:
                sealed, completed = probe.count_encrypted_completed(), probe.count_completed()
            if sealed != completed:
                raise PgqueueError(f"guarantees: {completed - sealed} of {completed} jobs of the encrypted run "
                                   "were stored in plaintext")
        return value, note


def _guarantees_unit(setting: Setting) -> Unit:
    prefix = f"guarantees_{setting.label}"

    runs = itertools.count()

    def run(ctx: Context) -> list[Sample]:
        # Each repetition starts one variant later, so a drift in the machine's load over a
        # repetition does not always land on the same variant.
        shift = next(runs) % len(VARIANTS)
        rates = {variant.name: _variant_rate(ctx, setting, variant)
                 for variant in VARIANTS[shift:] + VARIANTS[:shift]}
        baseline = rates["baseline"][0]
        samples: list[Sample] = []
        for variant in VARIANTS:
            value, note = rates[variant.name]
            if variant.name == "baseline":
                note = "; ".join(filter(None, (NOTE, note)))
            samples.append(Sample(f"{prefix}_{variant.name}", "jobs/s", value, note))
            if variant.name != "baseline":
                samples.append(Sample(f"{prefix}_{variant.name}_ratio", "x",
                                      value / baseline if baseline else float("nan")))
        return samples

    return Unit(f"guarantees {setting.processes} x {setting.concurrency}", run)


GUARANTEES: list[Unit] = [_guarantees_unit(setting) for setting in SETTINGS]
