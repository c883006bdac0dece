"""A tiny run of the symplectic protocols' writer, checked by the regression guard's script (whose rules are
tested with `ttmem bench regress` in tests/eval/test_regress.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "symplectic"))

import regress  # noqa: E402
import run as bench  # noqa: E402


def test_a_tiny_protocol_run_writes_a_report_the_guard_accepts(tmp_path, capsys):
    out, table = tmp_path / "r.json", tmp_path / "rows.csv"
    args = ["interference", "--dim", "8", "--seq-len", "16", "--chunk", "4", "--batch", "2", "--steps", "2",
            "--seeds", "0,1", "--tag", "tiny", "--out", str(out), "--csv", str(table)]
    bench.main(args)
    data = json.loads(out.read_text())
    assert data["tag"] == "tiny" and data["config"]["seeds"] == [0, 1] and data["device"]["device"] == "cpu"
    cell = data["metrics"]["same_heads"]["post_a_loss"]
    assert len(cell["values"]) == 2 and cell["min"] <= cell["mean"] <= cell["max"]
    assert "| variant |" in capsys.readouterr().out
    assert table.read_text().count("\n") == 2  # header and one row
    bench.main(args)  # same seeds, same config: identical losses; times may move
    rerun = json.loads(out.read_text())
    assert rerun["metrics"]["manifold_paging"]["post_a_loss"] == data["metrics"]["manifold_paging"]["post_a_loss"]
    base = tmp_path / "base.json"
    base.write_text(json.dumps(data))
    assert regress.main(["--baseline", str(base), "--latest", str(out), "--max-time-regression-pct", "1e9"]) == 0


def test_the_lm_comparison_runs_its_arms_and_rejects_unknown_ones(tmp_path, capsys):
    import lm  # noqa: E402

    out = tmp_path / "lm.json"
    common = ["--dim", "16", "--depth", "1", "--seq-len", "16", "--batch", "2", "--steps", "2", "--warmup", "1",
              "--val-windows", "2", "--max-bytes", "100000", "--seeds", "0", "--out", str(out)]
    lm.main(["mac", "--arms", "gating_constant", *common])
    data = json.loads(out.read_text())
    assert set(data["metrics"]) == {"control", "gating_constant"}
    assert data["metrics"]["control"]["minus_control_bpb"]["mean"] == 0
    assert 0 < data["metrics"]["gating_constant"]["val_bpb"]["mean"] < 9
    with pytest.raises(SystemExit):
        lm.main(["mac", "--arms", "nosuch", *common])
    assert "unknown arm(s) nosuch" in capsys.readouterr().err


def test_the_budget_sweep_never_exceeds_its_cap(tmp_path, capsys):
    out = tmp_path / "budget.json"
    bench.main(["budget", "--dim", "16", "--seq-len", "16", "--chunk", "4", "--batch", "2", "--steps", "2",
                "--seeds", "0", "--budgets", "1,0", "--switch-window", "8", "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"unconstrained", "budget_1", "budget_0", "same_heads_4"}
    for task in ("spiral", "helix_drift"):
        rate = {name: metrics[name][task]["switch_rate"]["mean"] for name in metrics}
        # no state is carried between steps, so each sequence (4 boundaries) lies inside one 8-boundary window
        assert rate["budget_1"] <= 1 / 4 and rate["budget_0"] == 0
        assert metrics["unconstrained"][task]["blocked_rate"]["mean"] == 0
    assert "| budget_0 |" in capsys.readouterr().out


def test_mutation_search_scores_each_candidate_once_and_keeps_its_elites():
    import random

    import search

    from ttmem.layers import NeuralMemory

    target = {"phase_mix": 0.25, "quorum_mix": 0.55, "budget_topk_ratio": 0.3, "hierarchical": False,
              "hierarchy_mix": 0.5, "quorum_window": 7, "quorum_threshold": 0.3, "quorum_temperature": 0.08}
    calls = []

    def fitness(candidate):  # genes away from the target: a closed form the search must not make worse
        calls.append(search.key(candidate))
        return float(sum(candidate[g] != v for g, v in target.items()))

    history, scores = search.search(fitness, random.Random(0), population=6, generations=5, elites=2, p=0.35)
    assert len(calls) == len(set(calls)) == len(scores)
    best = [h["fitness"] for h in history]
    assert best == sorted(best, reverse=True) and best[-1] == min(scores.values())
    rng = random.Random(1)
    for _ in range(20):
        c = search.random_candidate(rng)
        assert c["quorum_mix"] > 0 or c["budget_topk_ratio"] is None
        assert search.mutate(c, rng, 0.0) == c
        NeuralMemory(16, chunk_size=4, symplectic=search.layer_options(c, 16))  # every candidate is a valid layer
    with pytest.raises(ValueError, match="elites"):
        search.search(fitness, rng, population=2, generations=1, elites=3, p=0.5)


def test_a_tiny_transfer_search_writes_its_finalists(tmp_path):
    out = tmp_path / "m.json"
    bench.main(["mutation_transfer", "--dim", "8", "--seq-len", "16", "--chunk", "4", "--batch", "2", "--steps", "1",
                "--seeds", "0", "--check-seeds", "1", "--population", "2", "--generations", "1", "--elites", "1",
                "--long-len", "16", "--long-steps", "1,1,1", "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert len(metrics["search"]["evaluated"]) == 2
    for name in ("winner", "seeded", "same_heads", "same_heads_4"):
        cell = metrics[name]
        expected = 0.5 * cell["classic"]["mean"] + 0.5 * cell["transfer"]["mean"]  # default transfer weight
        assert abs(cell["fitness"]["mean"] - expected) < 1e-12
        assert abs(cell["classic"]["mean"] - (cell["spiral"]["mean"] + cell["helix_drift"]["mean"]) / 2) < 1e-12
