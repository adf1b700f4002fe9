"""The ``pgqueue`` command line, built with typer. Each command group lives in its own module."""

from pgqueue.cli.main import app, main

__all__ = ["app", "main"]
