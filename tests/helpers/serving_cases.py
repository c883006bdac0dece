"""Shared by the serving tests: tiny backends and a greedy-decoding reference independent of the engine."""

from functools import cache

from ttmem.security.backends import TinyLM, TinyLMBackend

VOCAB = 13


@cache
def tiny_backend(mixer: str) -> TinyLMBackend:
    """A 2-layer TinyLM over VOCAB tokens; mixer "attention" (sliceable KV states) or "theta" (fixed-size).
    One per mixer for the whole run: backends hold no state between calls."""
    return TinyLMBackend(TinyLM(vocab_size=VOCAB, dim=32, depth=2, heads=4, mixer=mixer))


def greedy(backend, prompt, n, state=None):
    """Full prefill from ``state`` (a fresh one if None), then ``n`` greedy tokens: (tokens, final state)."""
    state, logits = backend.extend(state if state is not None else backend.initial_state(), prompt)
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        state, logits = backend.extend(state, out[-1:])
    return out, state
