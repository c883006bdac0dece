"""A small multi-user serving engine on loopback, with or without a shared prefix cache.

Modes:
- "shared": one prefix cache for all users (a token trie of prefill states, LRU-bounded) and a
  longest-prefix-first scheduler: each round sorts the waiting requests by the length of their
  cached prefix (ties by arrival), takes up to ``max_batch`` of them and answers them in that order.
  This is the design PROMPTPEEK (Wu et al., NDSS 2025) attacks.
- "isolated": no cross-user sharing; each user owns one state slot (fixed size with a θ-memory
  backend); requests run first come, first served. ``session="continue"`` resumes the user's slot.

The cache stores prompt prefills only (generated tokens are not inserted). A request reuses at most
``len(prompt) - 1`` cached tokens, since the last prompt token must run to produce logits. With a
backend whose states cannot be cut to a prefix, only exactly cached prompts are reused.

HTTP (standard library, 127.0.0.1 only): ``POST /generate`` with JSON
``{"user": str, "prompt": [int], "max_new_tokens": int, "session": "new" | "continue"}`` returns
``{"tokens": [int]}`` (greedy decoding); ``GET /health``. Malformed requests get a 4xx and touch no
state; a full queue gives 503, a request that waits too long 504.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ttmem.security.backends import Backend, build_backend, check_tokens
from ttmem.security.prefix_cache import PrefixCache

MODES = ("shared", "isolated")
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass
class _Request:
    user: str
    prompt: list[int]
    max_new_tokens: int
    session: str
    arrival: int
    future: Future = field(default_factory=Future)


class QueueFull(RuntimeError):
    """The engine's waiting queue is at its bound."""


class ServingEngine:
    """Schedules generation requests from several users over one backend (see module docstring)."""

    def __init__(
        self,
        backend: Backend,
        mode: str = "shared",
        max_batch: int = 64,
        max_queue: int = 256,
        max_prompt_tokens: int = 4096,
        max_new_tokens: int = 256,
        cache_entries: int = 1024,
        max_users: int = 1024,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(backend, Backend):
            raise TypeError("backend must implement the Backend protocol (initial_state, extend, slice_state)")
        self.backend, self.mode = backend, mode
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_prompt_tokens, self.max_new_tokens, self.max_users = (
            max_prompt_tokens,
            max_new_tokens,
            max_users,
        )
        self.cache = PrefixCache(backend, cache_entries) if mode == "shared" else None
        self.user_states: OrderedDict[str, Any] = OrderedDict()
        self._queue: list[_Request] = []
        self._cond = threading.Condition()
        self._arrivals = 0
        self._stopping = False
        self._worker: threading.Thread | None = None
        self.served = 0

    def validate(self, user: Any, prompt: Any, max_new_tokens: Any = 1, session: Any = "new") -> _Request:
        """Check a request's fields; raises TypeError/ValueError naming the bad field."""
        if not isinstance(user, str) or not 0 < len(user) <= 128:
            raise ValueError("user must be a non-empty string of at most 128 characters")
        tokens = check_tokens(prompt, self.backend.vocab_size, "prompt")
        if len(tokens) > self.max_prompt_tokens:
            raise ValueError(f"prompt must have at most {self.max_prompt_tokens} tokens, got {len(tokens)}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise TypeError("max_new_tokens must be an int")
        if not 1 <= max_new_tokens <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in [1, {self.max_new_tokens}], got {max_new_tokens}")
        if session not in ("new", "continue"):
            raise ValueError(f"session must be 'new' or 'continue', got {session!r}")
        return _Request(user, tokens, max_new_tokens, session, 0)

    def submit(self, user: str, prompt: Sequence[int], max_new_tokens: int = 1, session: str = "new") -> Future:
        """Queue a request; the future resolves to ``{"tokens": [...]}``. Raises QueueFull at the bound."""
        req = self.validate(user, prompt, max_new_tokens, session)
        with self._cond:
            if self._stopping:
                raise RuntimeError("engine is stopped")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"queue holds {self.max_queue} requests")
            req.arrival, self._arrivals = self._arrivals, self._arrivals + 1
            self._queue.append(req)
            self._cond.notify()
        return req.future

    def generate(self, user: str, prompt: Sequence[int], max_new_tokens: int = 1, session: str = "new") -> dict:
        return self.submit(user, prompt, max_new_tokens, session).result(timeout=60)

    def start(self) -> ServingEngine:
        if self._worker is None:
            self._worker = threading.Thread(target=self._loop, name="ttmem-serving", daemon=True)
            self._worker.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; requests still waiting fail with RuntimeError."""
        with self._cond:
            self._stopping = True
            pending, self._queue = self._queue, []
            self._cond.notify_all()
        for req in pending:
            req.future.set_exception(RuntimeError("engine stopped"))
        if self._worker is not None:
            self._worker.join(timeout)

    def _priority(self, req: _Request) -> tuple[int, int]:
        cached = self.cache.match_length(req.prompt, len(req.prompt) - 1) if self.cache is not None else 0
        return (-cached, req.arrival)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.1)
                if self._stopping:
                    return
                self._queue.sort(key=self._priority)  # longest cached prefix first; FIFO in isolated mode
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            for req in batch:
                try:
                    req.future.set_result(self._run(req))
                except Exception as exc:  # a failing request must not stop the engine
                    req.future.set_exception(exc)
                self.served += 1

    def _run(self, req: _Request) -> dict:
        backend = self.backend
        if self.cache is not None:
            start, state = self.cache.lookup(req.prompt, len(req.prompt) - 1)
            state = backend.initial_state() if state is None else state
        else:
            start = 0
            resume = req.session == "continue" and req.user in self.user_states
            state = self.user_states[req.user] if resume else backend.initial_state()
        state, logits = backend.extend(state, req.prompt[start:])
        if self.cache is not None:
            self.cache.insert(req.prompt, state)
        tokens = []
        for i in range(req.max_new_tokens):
            tokens.append(int(logits.argmax()))
            if i + 1 < req.max_new_tokens or self.cache is None:
                state, logits = backend.extend(state, tokens[-1:])
        if self.cache is None:
            self.user_states[req.user] = state
            self.user_states.move_to_end(req.user)
            while len(self.user_states) > self.max_users:
                self.user_states.popitem(last=False)
        return {"tokens": tokens}


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


class RunningServer:
    """An HTTP server plus engine running in background threads; ``close()`` shuts both down."""

    def __init__(self, engine: ServingEngine, host: str, port: int, max_body_bytes: int, timeout_s: float):
        if host not in LOOPBACK:
            raise ValueError(f"host must be a loopback address {LOOPBACK}, got {host!r}")
        self.engine = engine.start()
        self.httpd = _HTTPServer((host, port), _make_handler(engine, max_body_bytes, timeout_s))
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.engine.stop()
        self._thread.join(5)

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
) -> RunningServer:
    """Start serving ``engine`` on ``host:port`` (port 0 picks a free one)."""
    return RunningServer(engine, host, port, max_body_bytes, request_timeout_s)


def post_json(host: str, port: int, path: str, payload: Any, timeout: float = 30.0) -> tuple[int, dict, int]:
    """One request on a fresh connection: (status, decoded body, elapsed ns until the body arrived)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        start = time.perf_counter_ns()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter_ns() - start
    finally:
        conn.close()
    return resp.status, json.loads(raw or b"{}"), elapsed


def main(argv: Sequence[str] | None = None) -> int:
    """Run a server until ``--lifetime-s`` passes or SIGTERM/SIGINT; prints ``PORT <n>`` once listening."""
    import argparse
    import signal

    import torch

    parser = argparse.ArgumentParser(prog="python -m ttmem.security.server", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="tiny-attention", help="tiny-attention[:V], tiny-theta[:V] or a preset")
    parser.add_argument("--mode", choices=MODES, default="shared")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--lifetime-s", type=float, default=3600.0)
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.setswitchinterval(1e-4)  # let handler threads answer promptly while the worker holds the GIL
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine = ServingEngine(build_backend(args.backend), mode=args.mode, max_new_tokens=args.max_new_tokens)
    with serve(engine, port=args.port) as srv:
        print(f"PORT {srv.port}", flush=True)
        stop.wait(args.lifetime_s)
    return 0


class SubprocessServer:
    """``main`` in its own process (attacker and server do not share an interpreter); ``close()`` stops it."""

    def __init__(
        self,
        backend: str,
        mode: str = "shared",
        max_new_tokens: int = 256,
        lifetime_s: float = 600.0,
        start_timeout_s: float = 120.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        src = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
        cmd = [
            sys.executable,
            "-m",
            "ttmem.security.server",
            "--backend",
            backend,
            "--mode",
            mode,
            "--max-new-tokens",
            str(max_new_tokens),
            "--lifetime-s",
            str(lifetime_s),
        ]
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        ready = select.select([self.process.stdout], [], [], start_timeout_s)[0]
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"server process did not start (got {line!r})")
        self.host, self.port = "127.0.0.1", int(line.split()[1])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process.stdout.close()

    def __enter__(self) -> SubprocessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
