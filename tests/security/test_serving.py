"""Serving engine without HTTP: cached prefills answer like uncached ones, scheduling order per mode, bounds."""

import threading

import pytest

from tests.helpers.serving_cases import greedy, tiny_backend
from ttmem.security.serving import ServingEngine


def test_prefix_cache_reuse_gives_the_uncached_answer():
    attention = tiny_backend("attention")
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


def test_longest_prefix_first_order_in_shared_mode():
    attention = tiny_backend("attention")
    engine = ServingEngine(attention, mode="shared", max_new_tokens=64).start()
    try:
        engine.generate("victim", [3, 1, 4, 1, 5, 9, 2, 6], 1)
        candidates = [[3, 1, 4, 1, c, 0] for c in (7, 8, 5, 0)]  # only c = 5 continues the victim's prompt
        assert _order_of_completion(engine, [11] * 30, candidates)[0] == 2
    finally:
        engine.stop()


def test_first_come_first_served_in_isolated_mode():
    theta = tiny_backend("theta")
    engine = ServingEngine(theta, mode="isolated", max_new_tokens=64).start()
    try:
        engine.generate("victim", [3, 1, 4, 1, 5, 9, 2, 6], 1)
        candidates = [[3, 1, 4, 1, c, 0] for c in (7, 8, 5, 0)]
        assert _order_of_completion(engine, [11] * 30, candidates) == [0, 1, 2, 3]
    finally:
        engine.stop()


def test_known_modes_backends_and_positive_bounds():
    attention = tiny_backend("attention")
    with pytest.raises(ValueError, match="mode"):
        ServingEngine(attention, mode="public")
    with pytest.raises(TypeError, match="backend"):
        ServingEngine(object())
    for bound in ("max_batch", "max_queue", "max_prompt_tokens", "max_new_tokens", "max_users"):
        with pytest.raises(ValueError, match=f"{bound} must be an int >= 1, got 0"):
            ServingEngine(attention, **{bound: 0})
