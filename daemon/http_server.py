"""The daemon's HTTP server: `/metrics` for Prometheus, `/healthz` for probes, on waitress.

prometheus_client's own server (wsgiref, a listen backlog of 5, a thread per connection and no
idle timeout) gave 1-2.5 s p99 connects and some 10-s timeouts with 50 clients during a
rotation, and one thread per idle connection forever. waitress (a well-kept pure-Python WSGI
server) gives what a daemon needs: a backlog of 1024, a fixed pool of `THREADS` request
threads behind one I/O thread, at most `max_connections` open connections (more wait in the
backlog) and idle connections closed after `idle_timeout` seconds.

A scrape renders the registry at most once every `CACHE_SECONDS`: scrapes that arrive together
share one rendering (in each format and encoding asked for) instead of each walking every
collector under the GIL, so `/metrics` is at most that much older than the state it shows.
`/healthz` answers from the service's cached state (`health`), never from hardware or the
journal. Benchmark: bench/bench_http.py, results in bench/RESULTS.md.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from daemon.instance import StartupError
from daemon.log import get_logger

THREADS = 4
BACKLOG = 1024
CACHE_SECONDS = 0.5
Health = Callable[[], tuple[bool, dict[str, Any]]]
StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class _Rendered:
    at: float  # monotonic
    body: bytes
    headers: list[tuple[str, str]]


class MetricsApp:
    """The WSGI application: `/metrics` (cached rendering), `/healthz` (JSON), `/` (an index)."""

    def __init__(self, registry: CollectorRegistry, health: Health, cache_seconds: float = CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._health = health
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()  # one rendering at a time; others wait and share it
        self._cache: dict[tuple[str, bool], _Rendered] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """WSGI: /metrics (rendered at most every 0.5 s, shared), /healthz, else 404."""
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            compress = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", ""))
            rendered = self.render(environ.get("HTTP_ACCEPT", ""), compress)
            start_response("200 OK", [*rendered.headers, ("Content-Length", str(len(rendered.body)))])
            return [rendered.body]
        if path == "/healthz":
            ok, document = self._health()
            body = (json.dumps(document, sort_keys=True) + "\n").encode()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
            return [body]
        if path == "/":
            body = b"soakd: /metrics (Prometheus), /healthz (health as JSON)\n"
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "10")])
        return [b"not found\n"]

    def render(self, accept: str, compress: bool) -> _Rendered:
        """The exposition for this Accept header (gzipped if `compress`), rendered at most once
        every `cache_seconds`."""
        encoder, content_type = choose_encoder(accept)
        key = (content_type, compress)
        with self._lock:
            cached = self._cache.get(key)
            now = self._clock()
            if cached is not None and now - cached.at < self._cache_seconds:
                return cached
            body = encoder(self._registry)
            headers = [("Content-Type", content_type)]
            if compress:
                body = gzip.compress(body, compresslevel=6)
                headers.append(("Content-Encoding", "gzip"))
            rendered = _Rendered(self._clock(), body, headers)
            self._cache[key] = rendered
            return rendered


class _ToLog(logging.Handler):
    """waitress logs through `logging`; the daemon logs through structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        get_logger().warning("http_server", message=record.getMessage())


def _bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket for host:port. Raises StartupError with one line saying why not."""
    where = f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise StartupError(f"cannot listen on {where}: host {host!r} does not resolve "
                           f"({getattr(exc, 'strerror', None) or exc}); set daemon.listen or --listen") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = {errno.EADDRINUSE: "address already in use",
               errno.EADDRNOTAVAIL: "not an address of this machine",
               errno.EACCES: "permission denied (ports below 1024 need privileges)"}.get(
                   exc.errno or 0, exc.strerror or str(exc))
        raise StartupError(f"cannot listen on {where}: {why} (set daemon.listen or --listen)") from None
    return sock


class MetricsServer:
    """`MetricsApp` served by waitress on its own threads."""

    def __init__(self, app: MetricsApp, host: str, port: int, idle_timeout: float, max_connections: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address = ""

    def start(self) -> str:
        """Bind and serve; returns the address really listened on ("host:port"). Raises
        StartupError (one line) when the address cannot be used."""
        import waitress

        waitress_log = logging.getLogger("waitress")
        if not any(isinstance(h, _ToLog) for h in waitress_log.handlers):
            waitress_log.addHandler(_ToLog())
            waitress_log.propagate = False
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" at every burst
        sock = _bind(self._host, self._port)
        idle = max(1, round(self._idle_timeout))
        self._server = waitress.create_server(
            self._app, sockets=[sock], threads=THREADS, backlog=BACKLOG,
            connection_limit=self._max_connections, channel_timeout=idle,
            cleanup_interval=max(1, min(30, idle // 2)), ident="soakd", expose_tracebacks=False,
            asyncore_use_poll=True)  # select() stops at 1024 descriptors
        host, port = self._server.effective_host, self._server.effective_port
        self.address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        self._thread = threading.Thread(target=self._server.run, name="soakd-http", daemon=True)
        self._thread.start()
        return self.address

    def stop(self, timeout: float = 1.0) -> None:
        """Close the listening socket and every connection, end the threads."""
        if self._server is None:
            return
        from waitress import wasyncore

        server = self._server
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
        if self._thread is not None:
            self._thread.join(timeout)
        server.task_dispatcher.shutdown(timeout=timeout)
        self._server = None
