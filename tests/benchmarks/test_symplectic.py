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
