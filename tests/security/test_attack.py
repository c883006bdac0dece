"""PROMPTPEEK-style attack end to end on a tiny model with a 16-token vocabulary."""

import random
import sys
import time

import pytest
import torch

from ttmem.security.attack import AttackResult, promptpeek, summarize_attacks
from ttmem.security.backends import TinyLM, TinyLMBackend
from ttmem.security.client import post_json
from ttmem.security.server import serve
from ttmem.security.serving import ServingEngine

VOCAB = 16
LIFETIME_S = 120.0  # every server here stops by itself after this long


@pytest.fixture(autouse=True)
def responsive_threads():
    # Client and server share one interpreter here: switch threads often so answers leave in order.
    old_interval, old_threads = sys.getswitchinterval(), torch.get_num_threads()
    sys.setswitchinterval(1e-4)
    torch.set_num_threads(1)
    yield
    sys.setswitchinterval(old_interval)
    torch.set_num_threads(old_threads)


def _attack(mixer: str, mode: str, victims: int = 3, secret_len: int = 4, **attack_kwargs):
    backend = TinyLMBackend(TinyLM(vocab_size=VOCAB, dim=32, depth=2, heads=4, mixer=mixer))
    rng = random.Random(0)
    results = []
    with serve(ServingEngine(backend, mode=mode, max_new_tokens=1024), lifetime_s=LIFETIME_S) as srv:
        for v in range(victims):
            template = [rng.randrange(VOCAB) for _ in range(10)]
            secret = [rng.randrange(VOCAB) for _ in range(secret_len)]
            candidates = []
            for s in secret:
                c = rng.sample([t for t in range(VOCAB) if t != s], 3) + [s]
                rng.shuffle(c)
                candidates.append(c)
            victim = {"user": "victim", "prompt": template + secret + [1, 2], "max_new_tokens": 1}
            assert post_json(srv.host, srv.port, "/generate", victim)[0] == 200
            results.append(
                promptpeek(srv.host, srv.port, template, candidates, secret, VOCAB, seed=v, **attack_kwargs)
            )
    return summarize_attacks(results, 4), results


def test_attack_recovers_secret_from_shared_prefix_cache():
    # The blocker must still run when the last candidate arrives; a 128-token blocker of this small model
    # ended first in up to two thirds of the rounds on an idle machine.
    summary, results = _attack("attention", "shared", blocker_new_tokens=1024, settle_s=0.05)
    assert summary.tokens == 12 and summary.requests_per_token == 5.0
    early = summary.blocker_early_fraction
    assert summary.accuracy_order >= 10 / 12, f"blocker answered early in {early:.0%} of rounds"
    assert summary.ci_order[0] > summary.chance


def test_attack_is_at_chance_against_isolated_theta_memory():
    summary, _ = _attack("theta", "isolated")
    # P(>= 9 of 12 right | chance 1/4) < 0.001
    assert summary.accuracy_order <= 8 / 12


def test_attack_argument_checks():
    with pytest.raises(ValueError, match="candidates"):
        promptpeek("127.0.0.1", 1, [1], [[1, 2]], [1, 2], VOCAB)
    with pytest.raises(ValueError, match="two tokens"):
        promptpeek("127.0.0.1", 1, [1], [[1]], [1], VOCAB)


class _SlowBackend(TinyLMBackend):
    """TinyLM whose every extend call takes at least 2 ms, so the blocker's duration is known."""

    def extend(self, state, tokens):
        time.sleep(0.002)
        return super().extend(state, tokens)


@pytest.mark.parametrize("blocker_new_tokens, settle_s, early", [(1, 0.1, True), (100, 0.02, False)])
def test_rounds_with_a_blocker_that_ended_early_are_flagged(blocker_new_tokens, settle_s, early):
    # A 1-token blocker (about 4 ms) is answered long before candidates sent after 100 ms; a 100-token
    # blocker (at least 200 ms) is still running when candidates are sent after 20 ms.
    backend = _SlowBackend(TinyLM(vocab_size=VOCAB, dim=16, depth=1, heads=2, mixer="attention"))
    with serve(ServingEngine(backend, mode="shared", max_new_tokens=128), lifetime_s=LIFETIME_S) as srv:
        result = promptpeek(
            srv.host,
            srv.port,
            [3, 4, 5],
            [[1, 2], [6, 7]],
            [1, 6],
            VOCAB,
            blocker_new_tokens=blocker_new_tokens,
            candidate_new_tokens=1,
            settle_s=settle_s,
        )
    assert result.blocker_early == [early, early]
    assert summarize_attacks([result], 2).blocker_early_fraction == float(early)


def test_order_channel_capacity_is_one_bit_when_the_correct_answer_always_comes_first():
    # Correct candidate always first, wrong ones spread over the other places: the two inputs give
    # disjoint outputs, a noiseless binary channel of capacity log2(2) = 1 bit.
    rng = random.Random(0)
    results = []
    for _ in range(30):
        r = AttackResult([0, 0], [0, 0], [0, 0], 18, [(1, True), (2, False)] * 9)
        r.ranks = [(0, True)] + [(p, False) for p in range(1, 8)] + [(0, True)] + [(p, False) for p in range(1, 8)]
        results.append(r)
    perfect = summarize_attacks(results, 8)
    assert perfect.order_capacity_bits_per_request == pytest.approx(1.0, abs=1e-6)
    for r in results:  # the correct candidate at a uniformly random place: no channel beyond the null
        places = list(range(8))
        rng.shuffle(places)
        r.ranks = [(p, i == 0) for i, p in enumerate(places)] + [(p, i == 0) for i, p in enumerate(places[::-1])]
    chance = summarize_attacks(results, 8)
    assert chance.order_capacity_bits_per_request < 0.25
