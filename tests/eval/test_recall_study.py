"""The main job's recall study: distances binned and split at the window's reach exactly, equal parameter
counts, and the main job writing the study into its report, reused on a second run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ttmem.cli import main
from ttmem.data import IGNORE
from ttmem.eval.mqar import EVAL_STREAM, key_distances, mqar_batch
from ttmem.eval.recall_study import (
    RecallStudy,
    accuracy_by_distance,
    build_study_model,
    distance_edges,
)
from ttmem.models import count_parameters

STUDY = RecallStudy(seq_len=64, num_kv_pairs=4, vocab_size=32, steps=2, batch_size=4, dim=16, depth=2, heads=2,
                    window=8, chunk_size=8, segment_len=8, eval_examples=16, length_factors=(1, 2))


class OracleWithin(nn.Module):
    """Answers a query right exactly when its key lies at most ``reach`` tokens back (reads the KV block)."""

    def __init__(self, pairs: int, vocab: int, reach: int) -> None:
        super().__init__()
        self.pairs, self.vocab, self.reach = pairs, vocab, reach
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*inputs.shape, self.vocab)
        for r in range(inputs.shape[0]):
            keys = inputs[r, 0 : 2 * self.pairs : 2].tolist()
            for c in range(2 * self.pairs, inputs.shape[1]):
                token = int(inputs[r, c])
                if token in keys:
                    j = keys.index(token)
                    right = int(inputs[r, 2 * j + 1])
                    logits[r, c, right if c - 2 * j <= self.reach else (right + 1) % self.vocab] = 1.0
        return logits


def test_distance_edges_double_up_to_the_longest():
    assert distance_edges(64) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert distance_edges(100) == [0, 1, 2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("factor", [1, 2])
def test_accuracy_splits_exactly_at_the_reach(factor):
    oracle = OracleWithin(STUDY.num_kv_pairs, STUDY.vocab_size, STUDY.reach)
    score = accuracy_by_distance(oracle, STUDY, factor, batch_size=5)
    assert score["near"] == 1.0 and score["beyond"] == 0.0
    # counts against an independent tally of the same held-out examples
    recipe = STUDY.recipe(factor)
    inputs, targets = mqar_batch(recipe, EVAL_STREAM, 0, recipe.eval_examples)
    distance = key_distances(inputs, targets, recipe.num_kv_pairs)[targets != IGNORE]
    assert score["near_n"] == int((distance <= STUDY.reach).sum())
    assert score["beyond_n"] == int((distance > STUDY.reach).sum()) > 0
    edges = score["edges"]
    expected = [int(((distance > lo) & (distance <= hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    assert score["counts"] == expected and sum(expected) == len(distance)
    assert sum(score["hits"]) == score["near_n"]


@pytest.mark.parametrize("spec", ["lmm-tiny", "swa_transformer-tiny", "mac-tiny"])
def test_every_study_model_matches_the_transformers_parameter_count(spec):
    target = count_parameters(build_study_model("transformer-tiny", {}, STUDY))
    model = build_study_model(spec, {"memory_rule": "titans_linear"} if spec == "lmm-tiny" else {}, STUDY)
    # SwiGLU width moves in steps of 8 hidden units: 3 * dim * 8 parameters per layer
    assert abs(count_parameters(model) - target) <= STUDY.depth * 3 * STUDY.dim * 8 // 2
    assert model.config.dim == STUDY.dim and model.config.depth == STUDY.depth


def test_bad_study_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="reach"):
        RecallStudy(seq_len=32, depth=2, window=16)
    with pytest.raises(ValueError, match="steps"):
        RecallStudy(steps=0)
    with pytest.raises(ValueError, match="not one"):
        build_study_model("some/file.py:factory", {}, STUDY)


def test_main_job_reports_recall_and_reuses_it(tmp_path: Path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(400)))
    out = tmp_path / "run"
    study_args = [f"recall_args.{k}={v}" for k, v in
                  dict(seq_len=48, num_kv_pairs=4, vocab_size=32, steps=2, batch_size=4, dim=16, heads=2, window=8,
                       chunk_size=8, segment_len=8, eval_examples=8, length_factors="[1,2]").items()]
    argv = ["train", "--no-progress", "model=lmm-tiny", "model_args.dim=16", "model_args.depth=1",
            "model_args.memory_rule=titans_linear", f"data={corpus}", f"out_dir={out}", "seq_len=96",
            "batch_size=2", "steps=2", "warmup_steps=1", "eval_every=2", "eval_tokens=256", "eval_depths=1",
            "eval_samples=1", "log_every=1", *study_args]
    assert main(argv) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "## Recall past the window" in report and "recall.png" in report
    assert (out / "recall.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["recall_study"]["rows"]
    assert [r["model"] for r in rows] == ["lmm-tiny", "swa_transformer-tiny", "deltanet-tiny"]
    assert all({"past window 1x", "past window 2x", "within window 1x"} <= set(r) for r in rows)
    assert summary["recall_study"]["chance"] == pytest.approx(1 / 16) and summary["recall_study"]["reach"] == 16
    stored = {p.name: p.read_text() for p in (out / "recall").iterdir()}
    assert len(stored) == 3 and all(np.isfinite(json.loads(t)["final_loss"]) for t in stored.values())
    assert main([*argv, "--resume"]) == 0
    assert {p.name: p.read_text() for p in (out / "recall").iterdir()} == stored  # reused, not retrained
    code = main([*argv[:-1], "recall_args.bogus=1"])
    err = capsys.readouterr().err
    assert code != 0 and "recall_args.bogus" in err and "Traceback" not in err
    code = main([*argv, "out_dir=" + str(tmp_path / "other"), "recall_reference=nope-tiny"])
    err = capsys.readouterr().err
    assert code != 0 and "recall_reference" in err and "Traceback" not in err
    assert not (tmp_path / "other" / "checkpoints").exists()  # refused before training


def test_studies_side_by_side_equal_studies_one_after_another(tmp_path):
    from ttmem.eval.recall_study import run_studies

    study = dataclasses.replace(STUDY, steps=3, eval_examples=4)
    specs = {"lmm_linear-tiny": {}, "swa_transformer-tiny": {}}
    results = {
        workers: run_studies({s: (tmp_path / f"{workers}-{s}.json", s, a) for s, a in specs.items()}, study,
                             workers=workers)
        for workers in (1, 2)
    }
    for spec in specs:
        one, two = results[1][spec], results[2][spec]
        assert one["losses"] == two["losses"] and one["scores"] == two["scores"]
