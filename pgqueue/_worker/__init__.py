"""The worker's parts, orchestrated by ``loop.py`` (see its docstring), and the ``--processes``
supervisor. The public face is :class:`pgqueue.Worker`."""
