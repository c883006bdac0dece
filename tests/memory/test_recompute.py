"""``recompute=True`` checkpoints segments of about √n chunks: the backward keeps each segment's starting state
and rebuilds the segment's intermediates. Its values and gradients are held to the token-by-token reference in
``test_equivalence.py``; here, how the chunks are split."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.memory_cases import learned_initial_weights, make_inputs, start_state
from ttmem.memory import RULES, chunked, memorize


@pytest.mark.parametrize("time", [64, 40, 7])
def test_recompute_checkpoints_segments_of_sqrt_chunks(monkeypatch, time):
    segments: list[tuple[int, int]] = []
    checkpoint = chunked.checkpoint

    def recording(fn, first, last, *args, **kwargs):
        segments.append((first, last))
        return checkpoint(fn, first, last, *args, **kwargs)

    monkeypatch.setattr(chunked, "checkpoint", recording)
    rule, chunk = RULES["titans"], 4
    inputs = make_inputs(rule, time=time, seed=1, requires_grad=True)
    state = start_state(rule, learned_initial_weights(rule))
    out, _ = memorize(**inputs, rule=rule, chunk_size=chunk, state=state, recompute=True)
    out.sum().backward()
    n = time // chunk  # whole chunks; a trailing partial chunk is a group of its own
    size = round(math.sqrt(n))
    whole = [(first, min(n, first + size)) for first in range(0, n, size)]
    assert segments == whole + ([(0, 1)] if time % chunk else [])
    with torch.no_grad():  # nothing to keep for a backward: no checkpoint
        segments.clear()
        memorize(**inputs, rule=rule, chunk_size=chunk, state=state, recompute=True)
    assert segments == []
