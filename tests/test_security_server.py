"""Serving engine: correctness of cached prefills, scheduling order, isolation, 4xx handling, shutdown."""

import http.client
import json
import socket
import threading

import pytest
import torch

from ttmem.security.backends import TinyLM, TinyLMBackend
from ttmem.security.prefix_cache import PrefixCache
from ttmem.security.server import ServingEngine, SubprocessServer, post_json, serve

VOCAB = 13


@pytest.fixture(scope="module")
def attention():
    return TinyLMBackend(TinyLM(vocab_size=VOCAB, dim=32, depth=2, heads=4, mixer="attention"))


@pytest.fixture(scope="module")
def theta():
    return TinyLMBackend(TinyLM(vocab_size=VOCAB, dim=32, depth=2, heads=4, mixer="theta"))


def greedy(backend, prompt, n, state=None):
    """Independent reference: full prefill from ``state``, then greedy decoding."""
    state, logits = backend.extend(state if state is not None else backend.initial_state(), prompt)
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        state, logits = backend.extend(state, out[-1:])
    return out, state


def test_prefix_cache_reuse_gives_the_uncached_answer(attention):
    engine = ServingEngine(attention, mode="shared").start()
    try:
        first = [1, 2, 3, 4, 5, 6, 7]
        assert engine.generate("a", first, 3)["tokens"] == greedy(attention, first, 3)[0]
        second = [1, 2, 3, 4, 9, 9]
        assert engine.cache.match_length(second, len(second) - 1) == 4
        assert engine.generate("b", second, 4)["tokens"] == greedy(attention, second, 4)[0]
        assert len(engine.cache) == 2
    finally:
        engine.stop()


def test_prefix_cache_eviction_and_slicing(attention):
    cache = PrefixCache(attention, max_entries=2)
    prompts = [[1, 2, 3], [1, 2, 4, 5], [7, 8]]
    for p in prompts:
        cache.insert(p, attention.extend(None, p)[0])
    assert len(cache) == 2 and cache.match_length([1, 2, 3], 3) == 2  # [1,2,3] evicted, [1,2] via [1,2,4,5]
    length, state = cache.lookup([1, 2, 4, 0], 4)
    assert length == 3
    torch.testing.assert_close(attention.extend(state, [0])[1], attention.extend(None, [1, 2, 4, 0])[1])
    assert 7 in cache.root.children and 3 not in cache.root.children[1].children[2].children


def test_non_sliceable_states_reuse_only_exact_prompts(theta):
    cache = PrefixCache(theta)
    cache.insert([1, 2, 3], theta.extend(None, [1, 2, 3])[0])
    assert cache.match_length([1, 2, 3, 4], 4) == 3
    assert cache.match_length([1, 2, 5], 3) == 0


def _order_of_completion(engine, blocker, prompts):
    done, lock = [], threading.Lock()
    futures = [engine.submit("blocker", blocker, engine.max_new_tokens)]
    for i, p in enumerate(prompts):
        f = engine.submit(f"u{i}", p, 1)
        f.add_done_callback(lambda _f, i=i: (lock.acquire(), done.append(i), lock.release()))
        futures.append(f)
    for f in futures:
        f.result(timeout=30)
    return done


def test_longest_prefix_first_order_in_shared_mode(attention):
    engine = ServingEngine(attention, mode="shared", max_new_tokens=64).start()
    try:
        engine.generate("victim", [3, 1, 4, 1, 5, 9, 2, 6], 1)
        candidates = [[3, 1, 4, 1, c, 0] for c in (7, 8, 5, 0)]  # only c = 5 continues the victim's prompt
        assert _order_of_completion(engine, [11] * 30, candidates)[0] == 2
    finally:
        engine.stop()


def test_first_come_first_served_in_isolated_mode(theta):
    engine = ServingEngine(theta, mode="isolated", max_new_tokens=64).start()
    try:
        engine.generate("victim", [3, 1, 4, 1, 5, 9, 2, 6], 1)
        candidates = [[3, 1, 4, 1, c, 0] for c in (7, 8, 5, 0)]
        assert _order_of_completion(engine, [11] * 30, candidates) == [0, 1, 2, 3]
    finally:
        engine.stop()


def _raw(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["shared", "isolated"])
def test_malformed_requests_get_4xx_and_leave_state_alone(attention, theta, mode):
    backend = attention if mode == "shared" else theta
    engine = ServingEngine(backend, mode=mode, max_prompt_tokens=50, max_new_tokens=8)
    with serve(engine, max_body_bytes=2000) as srv:
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


def test_clean_shutdown_releases_port_and_worker(attention):
    engine = ServingEngine(attention)
    srv = serve(engine)
    port = srv.port
    assert post_json("127.0.0.1", port, "/generate", {"user": "a", "prompt": [1, 2]})[0] == 200
    srv.close()
    assert not engine._worker.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(RuntimeError):
        engine.submit("a", [1])


def test_only_loopback_and_known_modes(attention):
    with pytest.raises(ValueError, match="host"):
        serve(ServingEngine(attention), host="0.0.0.0")
    with pytest.raises(ValueError, match="mode"):
        ServingEngine(attention, mode="public")
    with pytest.raises(TypeError, match="backend"):
        ServingEngine(object())


def test_server_in_its_own_process_answers_and_exits_cleanly():
    srv = SubprocessServer("tiny-theta:8", mode="isolated", max_new_tokens=4, lifetime_s=60)
    try:
        status, body, _ = post_json(
            srv.host, srv.port, "/generate", {"user": "a", "prompt": [1, 2], "max_new_tokens": 4}
        )
        assert status == 200 and len(body["tokens"]) == 4 and all(0 <= t < 8 for t in body["tokens"])
    finally:
        srv.close()
    assert srv.process.returncode == 0
