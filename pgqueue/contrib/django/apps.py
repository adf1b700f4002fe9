"""The Django app config: adding ``"pgqueue.contrib.django"`` to INSTALLED_APPS gives manage.py
the ``pgqueue_worker`` command."""

from __future__ import annotations

from django.apps import AppConfig


class PgqueueConfig(AppConfig):  # type: ignore[misc]  # django is untyped here (no stubs)
    name = "pgqueue.contrib.django"
    label = "pgqueue"
    verbose_name = "pgqueue"
