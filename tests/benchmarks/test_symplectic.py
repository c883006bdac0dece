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


def test_carry_state_continues_the_memory_from_step_to_step():
    import common
    import torch

    torch.manual_seed(0)
    options = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=0.0)
    model = common.AutoAssociative(8, 1, 4, options)
    xs = [torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # parameters stay put: only the memory state moves
    carried, _ = common.train_steps(model, frozen, lambda step: xs[step], 3, carry_state=True)
    fresh, _ = common.train_steps(model, frozen, lambda step: xs[step], 3)
    state, expected = None, []
    with torch.no_grad():
        for x in xs:  # the reference: one stream over the three batches
            y, state = model.memory(model.norm(x), state)
            expected.append((y - x).pow(2).mean().item())
        assert fresh == [(model(x) - x).pow(2).mean().item() for x in xs]
    assert carried == pytest.approx(expected, rel=1e-6) and carried[1:] != fresh[1:]


def test_the_budget_holds_across_steps_when_the_state_is_carried(tmp_path):
    out = tmp_path / "budget.json"
    args = ["budget", "--dim", "8", "--seq-len", "16", "--chunk", "4", "--batch", "2", "--steps", "4", "--seeds", "0",
            "--budgets", "1", "--switch-window", "8", "--out", str(out)]
    bench.main([*args, "--carry-state"])
    data = json.loads(out.read_text())
    assert data["config"]["carry_state"] is True
    # 4 steps of 4 boundaries form one stream of 16 boundaries: at most 1 change in any 8, so 2 per sample
    for task in ("spiral", "helix_drift"):
        assert data["metrics"]["budget_1"][task]["switch_rate"]["mean"] <= 2 / 16
    assert data["metrics"]["unconstrained"]["spiral"]["switch_rate"]["mean"] > 2 / 16


def test_multi_motif_marks_the_motif_changes_and_their_neighbours():
    import torch
    import transfer

    x, mask = transfer.multi_motif(2, 40, 8, torch.Generator().manual_seed(0))
    changes = [t for t in range(1, 40) if (t // 4) % 2 != ((t - 1) // 4) % 2]  # segments of max(4, 40 // 16) = 4
    assert mask.nonzero().flatten().tolist() == sorted({p for t in changes for p in (t - 1, t, t + 1) if p < 40})
    assert torch.equal(x[0, :, 2] + x[0, :, 3], torch.ones(40)) and torch.equal(x[0, 4:8, 3], torch.ones(4))


def test_a_tiny_codebook_sweep_scores_and_ranks_its_grid(tmp_path):
    out = tmp_path / "sweep.json"
    bench.main(["codebook_sweep", "--dim", "8", "--seq-len", "32", "--chunk", "4", "--batch", "2", "--steps", "1",
                "--seeds", "0,1", "--codebook-mixes", "0.5", "--codebook-sizes", "2,4", "--codebook-topks", "none,3",
                "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    trials = metrics["trials"]
    # top-k 3 > K 2 is skipped; κ = 0 is one trial; the 2-head control and the baseline stand beside the grid
    assert set(trials) == {"codebook_off", "mix0p5_k2_topall", "mix0p5_k4_topall", "mix0p5_k4_top3", "same_heads",
                           "baseline"}
    assert trials["mix0p5_k4_top3"]["params"] == {"codebook_mix": 0.5, "codebook_size": 4, "codebook_topk": 3}
    assert trials["same_heads"]["internal_heads"] == 2 and trials["codebook_off"]["internal_heads"] == 2
    for cell in trials.values():
        for score, boundary, total in zip(cell["score"]["values"], cell["mse_boundary"]["values"],
                                          cell["mse_total"]["values"], strict=True):
            assert score == pytest.approx(0.7 * boundary + 0.3 * total, rel=1e-12)
    means = [trials[n]["score"]["mean"] for n in metrics["ranking"]]
    assert means == sorted(means) and metrics["best"] == metrics["ranking"][0]
    assert set(metrics["ranking"]) == set(trials) - {"same_heads", "baseline"}
    base = tmp_path / "base.json"
    base.write_text(out.read_text())
    assert regress.main(["--baseline", str(base), "--latest", str(out)]) == 0  # every check's path resolves


@pytest.mark.parametrize("protocol, candidate, others", [
    ("codebook_transfer", "codebook_champion_paging",
     {"baseline", "same_heads", "symplectic_paging", "phase_quorum_paging"}),
    ("manifold_transfer", "manifold_keyed_paging", {"baseline", "same_heads", "threshold_paging"}),
])
def test_a_tiny_transfer_comparison_pairs_its_seeds(tmp_path, protocol, candidate, others):
    out = tmp_path / "t.json"
    bench.main([protocol, "--dim", "8", "--seq-len", "16", "--chunk", "4", "--batch", "2", "--steps", "1",
                "--seeds", "0,1", "--long-len", "16", "--long-steps", "1,1,1", "--out", str(out)])
    data = json.loads(out.read_text())
    metrics = data["metrics"]
    assert set(metrics["ranking"]) == others | {candidate} and data["config"]["long_len"] == 16
    for name in metrics["ranking"]:
        cell = metrics[name]
        parts = zip(cell["long_horizon"]["clean_mse_post"]["values"], cell["long_horizon"]["phase_err_post"]["values"],
                    cell["interference"]["post_a_loss"]["values"], cell["transfer_score"]["values"], strict=True)
        for clean, phase, post_a, score in parts:
            assert score == pytest.approx(clean + 0.5 * phase + post_a, rel=1e-12)
    assert metrics["winner"] == min(metrics["ranking"], key=lambda n: metrics[n]["transfer_score"]["mean"])
    for other in others:
        pct = metrics["comparisons"][f"{candidate}_vs_{other}"]["transfer_score_pct"]["values"]
        ref, cand = metrics[other]["transfer_score"]["values"], metrics[candidate]["transfer_score"]["values"]
        assert pct == pytest.approx([(r - c) / r * 100 for r, c in zip(ref, cand, strict=True)], rel=1e-9)
    assert regress.main(["--baseline", str(out), "--latest", str(out)]) == 0  # every check's path resolves
