"""Synthetic tasks follow their published rules (checked property by property, over many seeds)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ttmem.data import (
    IGNORE,
    NEEDLE_DEPTHS,
    ByteTokenizer,
    SyntheticTask,
    copy_example,
    key_needle_example,
    mqar_example,
    needle_example,
)
from ttmem.data.synthetic import NOISE


@pytest.mark.parametrize("seq_len,pairs,vocab", [(64, 8, 256), (128, 16, 64), (40, 10, 32)])
def test_mqar_follows_zoology_rules(seq_len, pairs, vocab):
    for seed in range(20):
        inputs, targets = mqar_example(np.random.default_rng(seed), seq_len, pairs, vocab)
        assert inputs.shape == targets.shape == (seq_len,)
        keys, values = inputs[0 : 2 * pairs : 2], inputs[1 : 2 * pairs : 2]
        assert len(set(keys.tolist())) == pairs  # distinct keys
        assert ((keys >= 1) & (keys < vocab // 2)).all()  # keys: first half, no 0
        assert ((values >= vocab // 2) & (values < vocab)).all()  # values: second half
        answer_pos = np.flatnonzero(targets != IGNORE)
        assert len(answer_pos) == pairs and (answer_pos >= 2 * pairs).all()  # queries after the kv block
        assert (targets[: 2 * pairs] == IGNORE).all()
        lookup = dict(zip(keys.tolist(), values.tolist(), strict=True))
        for pos in answer_pos:  # the target at a query key is that key's value
            assert targets[pos] == lookup[int(inputs[pos])]
        assert sorted(inputs[answer_pos].tolist()) == sorted(keys.tolist())  # every key queried once
        query_region = np.delete(inputs[2 * pairs :], answer_pos - 2 * pairs)
        assert (query_region == 0).all()


def test_mqar_power_law_prefers_short_gaps():
    first_half = 0
    for seed in range(200):
        inputs, targets = mqar_example(np.random.default_rng(seed), 512, 4, 256)
        pos = np.flatnonzero(targets != IGNORE) - 8
        first_half += int((pos < (512 - 8) // 2).sum())
    assert first_half / (200 * 4) > 0.6  # uniform placement would give 0.5


def test_mqar_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="cannot hold"):
        mqar_example(np.random.default_rng(0), 30, 8, 256)
    with pytest.raises(ValueError, match="distinct keys"):
        mqar_example(np.random.default_rng(0), 512, 40, 64)


@pytest.mark.parametrize("seq_len", [128, 512])
def test_needle_example_rules(seq_len):
    tok = ByteTokenizer()
    assert len(NEEDLE_DEPTHS) == 40 and NEEDLE_DEPTHS[0] == 0.0 and NEEDLE_DEPTHS[-1] == 1.0
    assert np.allclose(np.diff(NEEDLE_DEPTHS), 1 / 39)
    for seed, depth in enumerate(NEEDLE_DEPTHS[::3]):
        ex = needle_example(np.random.default_rng(seed), seq_len, float(depth))
        assert ex.inputs.shape == ex.targets.shape == (seq_len,)
        text = tok.decode(np.append(ex.inputs, ex.targets[-1]))
        assert re.fullmatch(r"[1-9]\d{6}", ex.value)
        assert text.endswith(f"The number for {ex.key} is {ex.value}")
        needle = f"The number for {ex.key} is {ex.value}. "
        assert text.count(needle) == 1 and text.index(needle) == ex.needle_start
        # Answer-only loss: targets are exactly the 7 digits, at the last 7 positions.
        answer = np.flatnonzero(ex.targets != IGNORE)
        assert answer.tolist() == list(range(seq_len - 7, seq_len))
        assert tok.decode(ex.targets[answer]) == ex.value
        # The haystack around the needle is the noise text, and the needle sits at a sentence boundary
        # within one sentence of the requested depth.
        haystack = text[: ex.needle_start] + text[ex.needle_start + len(needle) :]
        assert haystack.startswith(NOISE[:40])
        at_edge = ex.needle_start in (0, ex.haystack_len)  # the haystack's end is cut to fit the length
        assert at_edge or text[ex.needle_start - 2 : ex.needle_start] == ". "
        assert abs(ex.needle_start - depth * ex.haystack_len) <= 21  # longest noise sentence


def test_needle_ruler_template_and_errors():
    ex = needle_example(np.random.default_rng(0), 400, 0.5, template="ruler")
    text = ByteTokenizer().decode(ex.inputs)
    assert "One of the special magic numbers for" in text and "What is the special magic number" in text
    with pytest.raises(ValueError, match="too short"):
        needle_example(np.random.default_rng(0), 40, 0.5)
    with pytest.raises(ValueError, match="depth"):
        needle_example(np.random.default_rng(0), 400, 1.5)


def test_copy_task_rules():
    for seq_len in (9, 32):
        inputs, targets = copy_example(np.random.default_rng(seq_len), seq_len, 50)
        n = seq_len // 2
        full = np.append(inputs, targets[-1])
        payload = full[-n:]
        assert (payload >= 2).all() and (payload < 50).all()
        assert full[-n - 1] == 1 and (full[-2 * n - 1 : -n - 1] == payload).all()
        assert (targets[-n:] == payload).all() and (targets[:-n] == IGNORE).all()


def test_synthetic_tasks_are_seeded():
    for name in ("mqar", "needle", "copy"):
        task = SyntheticTask(name, 256, 256)
        a = task.example(np.random.default_rng(7))
        b = task.example(np.random.default_rng(7))
        c = task.example(np.random.default_rng(8))
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="unknown synthetic task"):
        SyntheticTask("sorting", 64)


@pytest.mark.parametrize("seq_len,vocab,depth",
                         [(3, 6, 0.0), (40, 64, 0.0), (40, 64, 0.5), (41, 64, 1.0), (200, 16, 0.3)])
def test_key_needle_places_one_pair_and_asks_its_key_last(seq_len, vocab, depth):
    rng = np.random.default_rng(seq_len)
    inputs, targets = key_needle_example(rng, seq_len, vocab, depth)
    half = vocab // 2
    assert inputs.shape == targets.shape == (seq_len,)
    values = np.nonzero(inputs >= half)[0]
    assert len(values) == 1  # the needle's value is the only value-range token
    start = values[0] - 1
    assert start == round(depth * (seq_len - 3))
    key, value = inputs[start], inputs[start + 1]
    assert 1 <= key < half and inputs[-1] == key
    assert np.count_nonzero(inputs == key) == 2  # the haystack never repeats the needle's key
    assert np.all(inputs[inputs < half] >= 1)
    assert targets[-1] == value and np.all(targets[:-1] == IGNORE)


def test_key_needle_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="depth"):
        key_needle_example(rng, 16, 64, 1.5)
    with pytest.raises(ValueError, match="seq_len"):
        key_needle_example(rng, 2, 64, 0.5)
    with pytest.raises(ValueError, match="vocab_size"):
        key_needle_example(rng, 16, 4, 0.5)
