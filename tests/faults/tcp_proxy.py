"""A small TCP proxy on 127.0.0.1 for network-fault tests: forward, blackhole, resume.

``blackhole()`` models a network that stops delivering without closing anything (a half-open
path: a dead NAT entry, a stalled middlebox). No socket is closed and nothing is reset; the proxy
just stops reading, so what a client sends is accepted by the kernel (ACKed) and goes nowhere, and
nothing comes back. New connections are accepted by the kernel but never reach the server.

Note what that means for TCP keepalives: the client's kernel talks to the proxy's kernel, which
answers keepalive probes, so keepalives cannot notice a blackholed proxy; only a timeout at the
application level (a probe query bounded in time) can. A real lost path is noticed by keepalives
on an idle connection only.

``resume(sever=False)``: forwarding restarts and held bytes flow on (a pause).
``resume(sever=True)``: the connections that lived through the blackhole stay dead for good, as
when the path's state is lost (their peers never hear from each other again, still without a
FIN or RST); only new connections are forwarded.

One thread accepts, two threads pump each connection; ``close()`` closes every socket.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._generation = 0  # connections older than _severed_below never forward again
        self._severed_below = 0
        self.connections = 0
        self._threads: list[threading.Thread] = []

    # --- control ---

    def start(self) -> TcpProxy:
        self._spawn(self._accept_loop, "proxy-accept")
        return self

    def blackhole(self) -> None:
        """Stop forwarding in both directions, closing nothing."""
        self._forwarding.clear()

    def resume(self, sever: bool = False) -> None:
        """Forward again; with ``sever``, the connections opened before now stay dead."""
        if sever:
            with self._lock:
                self._generation += 1
                self._severed_below = self._generation
        self._forwarding.set()

    @property
    def forwarding(self) -> bool:
        return self._forwarding.is_set()

    def close(self) -> None:
        self._closed.set()
        self._forwarding.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- machinery ---

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _dead(self, generation: int) -> bool:
        return self._closed.is_set() or generation < self._severed_below

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
                self.connections += 1
            self._spawn(self._connect, "proxy-connect", client)

    def _connect(self, client: socket.socket) -> None:
        # During a blackhole the client's connection is accepted (by the kernel) but goes nowhere.
        while not self._forwarding.wait(0.1):
            if self._closed.is_set():
                return
        with self._lock:
            generation = self._generation
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            with contextlib.suppress(OSError):
                client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.append(upstream)
        self._spawn(self._pump, "proxy-up", client, upstream, generation)
        self._spawn(self._pump, "proxy-down", upstream, client, generation)

    def _pump(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        while True:
            if self._dead(generation):
                if self._closed.is_set():
                    return
                self._closed.wait(0.5)  # severed: hold the socket open, never forward again
                continue
            if not self._forwarding.is_set():
                self._forwarding.wait(0.1)
                continue
            try:
                readable, _, _ = select.select([source], [], [], 0.1)
                if not readable:
                    continue
                data = source.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except (OSError, ValueError):
                return
