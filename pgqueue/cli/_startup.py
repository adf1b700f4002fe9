"""The cyclic garbage collector during a command's start-up: paused, then frozen out of the way.

Start-up builds some 55,000 objects the collector tracks (modules' classes, functions and dicts,
typer's and pydantic's tables, the driver) that live as long as the process: almost none of them
is garbage. The cyclic collector still walks them again and again while they are created: some
30-40 ms of a worker's start (one full collection alone takes 20-30 ms once they exist). So the
CLI pauses it while it parses the command line and while a worker imports its own code, and then
freezes what exists (:func:`gc.freeze`: later collections skip it) before turning it back on.

Only pgqueue's, typer's and their dependencies' objects are ever frozen: the collector is back
on before the user's app is imported and before any command does its work, so an application's
garbage is collected as usual. Freezing before ``fork()`` is also what CPython recommends for
pre-forking servers (the ``--processes`` supervisor): children's collections then never write
to the pages they share with the parent.
"""

from __future__ import annotations

import gc

_paused = False


def pause_gc() -> None:
    """Turn the cyclic collector off until :func:`resume_gc` (no-op if it is already off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_gc() -> None:
    """Freeze every object that exists now and turn the collector back on, if :func:`pause_gc`
    turned it off; otherwise do nothing (a test's or an embedding program's collector is theirs)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
