"""Timing audit on tiny backends: structure, deterministic FLOP columns, a large timing effect."""

import json

import numpy as np
import pytest

from ttmem.security import audit
from ttmem.security.backends import TinyLM, TinyLMBackend


def _backend(mixer):
    return TinyLMBackend(TinyLM(vocab_size=16, dim=32, depth=1, heads=2, mixer=mixer))


def test_flops_per_decode_step_constant_for_theta_growing_for_kv_cache():
    kw = dict(trials=10, warmup=1, length=8, lengths=(8, 64), permutations=20)
    theta = audit.run_timing_audit(_backend("theta"), **kw)
    attn = audit.run_timing_audit(_backend("attention"), **kw)
    assert theta.length.flops[8] == theta.length.flops[64] > 0
    # One layer, 2 heads of 16: the cached step attends to 8 vs 64 keys -> 4 * 56 * 32 more FLOPs.
    assert attn.length.flops[64] - attn.length.flops[8] == 4 * 56 * 32
    assert {s.name for s in theta.content.summaries} == {"constant", "periodic", "random_a", "random_b"}
    assert set(theta.length.samples) == {"8", "64"} and theta.length.samples["8"].size == 10
    assert "samples" not in theta.to_dict()["length"]
    text = audit.format_report(attn)
    assert "prefix reuse" in text and "ANOVA" in text


def test_prefix_reuse_is_visible_in_timing():
    backend = _backend("attention")
    classes = audit.prefix_reuse_classes(backend, length=200)
    samples = audit.run_trials(classes, trials=15, warmup=2).samples
    assert np.median(samples["novel"]) > 2 * np.median(samples["repeated"])


def test_report_written_as_json_reads_back(tmp_path):
    report = audit.run_timing_audit(_backend("theta"), trials=5, warmup=1, length=4, lengths=(4, 8), permutations=10)
    report.write_json(tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["trials"] == 5 and set(data["length"]["flops"]) == {"4", "8"}
    assert data["length"]["flops"]["4"] == report.length.flops[4] > 0
    assert "samples" not in data["content"]


def test_bad_model_type():
    with pytest.raises(TypeError, match="model"):
        audit.run_timing_audit(3.5)
