"""The client side of the loopback serving engine: one JSON request, and a server in its own process.

``post_json`` sends one request on a fresh connection and times it until the body has arrived (what an
attacker measures). ``SubprocessServer`` runs ``ttmem serve`` in a separate interpreter, so that client
and server do not share a GIL and the server's timing is not the client's; the process stops by itself
after ``lifetime_s`` even if nobody closes it.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ttmem.security.serving import MODES


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


class SubprocessServer:
    """``ttmem serve`` in its own process on 127.0.0.1; ``close()`` stops it (SIGTERM, then SIGKILL)."""

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
            "ttmem",
            "serve",
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
