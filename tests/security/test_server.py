"""HTTP front of the serving engine: 4xx handling without state changes, loopback only, shutdown by close()
or by the end of the server's lifetime. Every server here binds 127.0.0.1 and stops by itself within a minute."""

import http.client
import json
import socket
import time

import pytest

from tests.helpers.serving_cases import VOCAB, greedy, tiny_backend
from ttmem.security.client import post_json
from ttmem.security.server import serve
from ttmem.security.serving import ServingEngine

LIFETIME_S = 60.0


def _raw(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["shared", "isolated"])
def test_malformed_requests_get_4xx_and_leave_state_alone(mode):
    backend = tiny_backend("attention" if mode == "shared" else "theta")
    engine = ServingEngine(backend, mode=mode, max_prompt_tokens=50, max_new_tokens=8)
    with serve(engine, max_body_bytes=2000, lifetime_s=LIFETIME_S) as srv:
        port = srv.port
        status, body, _ = post_json("127.0.0.1", port, "/generate", {"user": "alice", "prompt": [1, 2, 3, 4]})
        assert status == 200
        cached = len(engine.cache) if engine.cache is not None else None
        alice_state = engine.user_states.get("alice")
        bad = [
            b"{not json",
            b"[1, 2]",
            json.dumps({"user": "eve", "prompt": [1, VOCAB]}).encode(),
            json.dumps({"user": "eve", "prompt": []}).encode(),
            json.dumps({"user": "eve", "prompt": "hello"}).encode(),
            json.dumps({"user": "", "prompt": [1]}).encode(),
            json.dumps({"user": "eve", "prompt": [1] * 51}).encode(),
            json.dumps({"user": "eve", "prompt": [1], "max_new_tokens": 9}).encode(),
            json.dumps({"user": "eve", "prompt": [1], "session": "steal"}).encode(),
            json.dumps({"user": "eve", "prompt": [1], "extra": 1}).encode(),
        ]
        for b in bad:
            assert post_json("127.0.0.1", port, "/generate", b)[0] == 400, b
        assert _raw(port, "POST", "/generate", b"x" * 3000, {"Content-Length": "3000"})[0] == 413
        assert _raw(port, "POST", "/nowhere", b"{}", {"Content-Length": "2"})[0] == 404
        assert _raw(port, "GET", "/nowhere")[0] == 404
        assert _raw(port, "PUT", "/generate")[0] == 405
        assert _raw(port, "GET", "/health") == (200, {"ok": True, "mode": mode})
        if mode == "shared":
            assert len(engine.cache) == cached
        else:
            assert engine.user_states["alice"] is alice_state and set(engine.user_states) == {"alice"}
        status, body, _ = post_json(
            "127.0.0.1",
            port,
            "/generate",
            {"user": "alice", "prompt": [5, 6], "max_new_tokens": 3, "session": "continue"},
        )
        first, state = greedy(backend, [1, 2, 3, 4], 1)
        expected = greedy(backend, [5, 6], 3, state if mode == "isolated" else None)[0]
        assert status == 200 and body["tokens"] == expected


def _refuses_connections(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_clean_shutdown_releases_port_and_worker():
    engine = ServingEngine(tiny_backend("attention"))
    srv = serve(engine, lifetime_s=LIFETIME_S)
    port = srv.port
    assert post_json("127.0.0.1", port, "/generate", {"user": "a", "prompt": [1, 2]})[0] == 200
    srv.close()
    assert not srv.running and not engine._worker.is_alive()
    assert _refuses_connections(port)
    with pytest.raises(RuntimeError):
        engine.submit("a", [1])


def test_server_stops_by_itself_when_its_lifetime_ends():
    engine = ServingEngine(tiny_backend("attention"))
    start = time.monotonic()
    srv = serve(engine, lifetime_s=0.5)
    assert post_json("127.0.0.1", srv.port, "/generate", {"user": "a", "prompt": [1, 2]})[0] == 200
    while srv.running and time.monotonic() - start < 10:
        time.sleep(0.02)
    assert not srv.running and 0.5 <= time.monotonic() - start < 10
    assert not engine._worker.is_alive() and _refuses_connections(srv.port)
    srv.close()  # closing a server that already stopped is harmless


def test_only_loopback_free_ports_and_finite_lifetimes():
    engine = ServingEngine(tiny_backend("attention"))
    with pytest.raises(ValueError, match="host"):
        serve(engine, host="0.0.0.0")
    with pytest.raises(ValueError, match="port"):
        serve(engine, port=65536)
    for lifetime in (0.0, float("inf")):
        with pytest.raises(ValueError, match="lifetime_s"):
            serve(engine, lifetime_s=lifetime)
    with serve(ServingEngine(tiny_backend("attention")), lifetime_s=LIFETIME_S) as taken:
        with pytest.raises(OSError):
            serve(engine, port=taken.port)
    assert engine._worker is None  # rejected before anything started
