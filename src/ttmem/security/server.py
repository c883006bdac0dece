"""HTTP in front of a ``serving.ServingEngine``, on loopback only, in a request loop that ends by itself.

Standard library only. ``POST /generate`` with JSON
``{"user": str, "prompt": [int], "max_new_tokens": int, "session": "new" | "continue"}`` returns
``{"tokens": [int]}`` (greedy decoding); ``GET /health`` returns ``{"ok": true, "mode": ...}``.
Malformed requests get a 4xx and touch no state; a full queue gives 503, a request that waits too long 504.

The server binds 127.0.0.1 (or localhost) and nothing else: it is an instrument for timing experiments,
not a service. Its accept loop runs in a background thread for at most ``lifetime_s`` seconds and then
closes the socket and stops the engine, so a server nobody closes (a failed test, a lost client) does
not outlive its purpose; ``close()`` ends it sooner. ``serve_until_stopped`` is the foreground of the
``ttmem serve`` command.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ttmem.security.serving import QueueFull, ServingEngine

LOOPBACK = ("127.0.0.1", "localhost")
_POLL_S = 0.05  # how often the accept loop checks its deadline and close()


def _make_handler(engine: ServingEngine, max_body_bytes: int, request_timeout_s: float) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path != "/health":
                return self._send(404, {"error": f"unknown path {self.path}"})
            self._send(200, {"ok": True, "mode": engine.mode})

        def do_POST(self) -> None:
            if self.path != "/generate":
                return self._send(404, {"error": f"unknown path {self.path}"})
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._send(411, {"error": "Content-Length required"})
            if int(length) > max_body_bytes:
                self.close_connection = True
                return self._send(413, {"error": f"body larger than {max_body_bytes} bytes"})
            try:
                body = json.loads(self.rfile.read(int(length)) or b"null")
                if not isinstance(body, dict):
                    raise TypeError("body must be a JSON object")
                unknown = set(body) - {"user", "prompt", "max_new_tokens", "session"}
                if unknown:
                    raise ValueError(f"unknown fields {sorted(unknown)}")
                future = engine.submit(
                    body.get("user"),
                    body.get("prompt"),
                    body.get("max_new_tokens", 1),
                    body.get("session", "new"),
                )
            except (ValueError, TypeError) as exc:  # includes json.JSONDecodeError
                return self._send(400, {"error": str(exc)})
            except QueueFull as exc:
                return self._send(503, {"error": str(exc)})
            try:
                self._send(200, future.result(timeout=request_timeout_s))
            except TimeoutError:
                self._send(504, {"error": "request timed out"})
            except Exception as exc:
                self._send(500, {"error": str(exc)})

        def do_PUT(self) -> None:
            self._send(405, {"error": "use POST /generate or GET /health"})

        do_DELETE = do_PUT

    return Handler


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default listen backlog of 5 drops bursts of concurrent connects
    timeout = _POLL_S  # handle_request() returns after this long without a connection


class RunningServer:
    """An HTTP server plus engine running in background threads until ``lifetime_s`` passes or ``close()``."""

    def __init__(
        self,
        engine: ServingEngine,
        host: str,
        port: int,
        max_body_bytes: int,
        timeout_s: float,
        lifetime_s: float,
    ) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"host must be a loopback address {LOOPBACK}, got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in [0, 65535] (0 picks a free one), got {port!r}")
        if isinstance(lifetime_s, bool) or not isinstance(lifetime_s, (int, float)) or not 0 < lifetime_s < math.inf:
            raise ValueError(f"lifetime_s must be a finite number of seconds > 0, got {lifetime_s!r}")
        self.httpd = _HTTPServer((host, port), _make_handler(engine, max_body_bytes, timeout_s))
        self.engine = engine.start()  # after the bind, which may fail (port in use)
        self.host, self.port = host, self.httpd.server_address[1]
        self._deadline = time.monotonic() + lifetime_s
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ttmem-http", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._closing.is_set() and time.monotonic() < self._deadline:
                self.httpd.handle_request()
        finally:
            self.httpd.server_close()
            self.engine.stop()

    @property
    def running(self) -> bool:
        """False once the loop has ended (lifetime over or closed) and the port is released."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop accepting, release the port and stop the engine (at most a poll interval plus the engine's stop)."""
        self._closing.set()
        self._thread.join()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    engine: ServingEngine,
    host: str = "127.0.0.1",
    port: int = 0,
    max_body_bytes: int = 1 << 20,
    request_timeout_s: float = 60.0,
    lifetime_s: float = 3600.0,
) -> RunningServer:
    """Start serving ``engine`` on ``host:port`` (port 0 picks a free one) for at most ``lifetime_s`` seconds."""
    return RunningServer(engine, host, port, max_body_bytes, request_timeout_s, lifetime_s)


def serve_until_stopped(
    engine: ServingEngine,
    port: int = 0,
    lifetime_s: float = 3600.0,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Serve ``engine`` on 127.0.0.1 from the main thread until ``lifetime_s`` passes or SIGTERM / SIGINT
    arrives (either ends it normally); ``on_listening(port)`` runs once the port is bound. The signal handlers
    are in place before the port is announced, so a client that stops the server at once is heard."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with serve(engine, port=port, lifetime_s=lifetime_s) as server:
            if on_listening is not None:
                on_listening(server.port)
            while server.running and not stop.wait(_POLL_S):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
