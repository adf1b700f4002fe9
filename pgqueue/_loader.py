"""Import the user's App from a ``module:attribute`` path, as given to ``--app``."""

from __future__ import annotations

import importlib
import os
import sys

from pgqueue._humanize import raised_at
from pgqueue.app import App
from pgqueue.errors import ConfigurationError


def load_app(path: str) -> App:
    """Import ``module.sub:attr`` (the current directory is importable, as with uvicorn or celery)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"--app {path!r} must look like 'package.module:app'")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r} for --app {path!r}: {exc}") from exc
    except Exception as exc:  # the app's own code failed at import: its error, not pgqueue's
        raise ConfigurationError(
            f"importing {module_name!r} for --app {path!r} raised {type(exc).__name__}{raised_at(exc)}: {exc}"
        ) from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r} (--app {path!r})") from None
    if not isinstance(target, App):
        raise ConfigurationError(f"--app {path!r} is a {type(target).__name__}, not a pgqueue.App")
    return target
