"""An app whose own code fails at import (``--app broken_app:app``, ``cwd=tests/e2e``)."""

from __future__ import annotations

import pgqueue

app = pgqueue.App()

raise RuntimeError("the app's settings module is missing SMTP_HOST")
