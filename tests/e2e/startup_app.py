"""The App of ``tests/e2e/test_worker_startup.py`` (``--app startup_app:app``, ``cwd=tests/e2e``).

Its one task reports, as its result, what the worker process running it had imported and who its
parent is. With ``STARTUP_APP_THREAD=1`` the module starts a thread at import, as a client
library's background flusher would, and with ``STARTUP_APP_SOCKET=1`` it opens a socket, as a
connection made at import would: a ``--processes`` supervisor never imports the app (each forked
child does), so every child has its own. The result also lists what was imported before this
module began (the worker's own code comes first), and whether the cyclic garbage collector was on
when this module was imported and when the job ran (the CLI pauses it only during its own start-up).
With ``STARTUP_APP_SLOW=<file>`` its import appends its pid to the file, then takes 5 s.
"""

from __future__ import annotations

import gc
import sys

_IMPORTED_BEFORE_APP = sorted(sys.modules)
_GC_AT_IMPORT = gc.isenabled()

import os  # noqa: E402 - the line above must see sys.modules before this module imports anything
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pgqueue  # noqa: E402

app = pgqueue.App()

if marker := os.environ.get("STARTUP_APP_SLOW"):
    # An app that takes a while to import (a framework's set-up): says when it has begun.
    with open(marker, "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(5)
if os.environ.get("STARTUP_APP_THREAD") == "1":
    threading.Thread(target=threading.Event().wait, name="app-import-thread", daemon=True).start()
if os.environ.get("STARTUP_APP_SOCKET") == "1":
    _held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)


@app.task(name="whoami")
def whoami(job: pgqueue.Job, hold_seconds: float = 0.0) -> dict[str, object]:
    # Holding the slot makes a second job go to another process of a --processes worker.
    time.sleep(hold_seconds)
    return {"pid": os.getpid(), "ppid": os.getppid(), "modules": sorted(sys.modules),
            "modules_before_app": _IMPORTED_BEFORE_APP, "gc_at_import": _GC_AT_IMPORT, "gc": gc.isenabled(),
            "threads": sorted(t.name for t in threading.enumerate())}
