"""``pgqueue bench``: throughput and latency of pgqueue on a real server, beside PostgreSQL's ceiling.

Modules: ``runner`` (repetitions, scratch databases), ``scenarios`` and ``physical`` (what is
measured), ``workers`` (real Worker processes), ``stats`` (the one timing/statistics helper),
``report`` (table and JSON); the SQL is ``pgqueue._db.bench``'s.
"""

from pgqueue._bench.report import Report
from pgqueue._bench.runner import ProgressSink, run_bench
from pgqueue._bench.scenarios import SCENARIOS

__all__ = ["SCENARIOS", "ProgressSink", "Report", "run_bench"]
