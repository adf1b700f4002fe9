"""Kept only for ``schedule_store.py`` (the scheduling branch's), which imports ``translate_errors``
from here: the jobs' statements are in ``jobs.py`` now, the error policy in ``errors.py``. Delete
this module once ``schedule_store`` imports from ``pgqueue._db.errors``."""

from pgqueue._db.errors import translate_errors as translate_errors
