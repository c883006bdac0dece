"""The symplectic benchmarks' regression guard (pass, fail, refuse) and a tiny run of the protocols' writer."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "symplectic"))

import regress  # noqa: E402
import run as bench  # noqa: E402


def report(loss=0.2, time_ms=10.0, gain=0.5, config=None, device="cpu"):
    cell = lambda v: {"mean": v, "min": v, "max": v, "values": [v]}  # noqa: E731
    return {"protocol": "symplectic", "tag": "t", "config": config or {"dim": 32, "seeds": [0, 1, 2]},
            "device": {"device": device, "torch": "2.13.0", "threads": 1},
            "metrics": {"paged": {"spiral": cell(loss), "train_ms": cell(time_ms), "long": {"gain": cell(gain)}}},
            "checks": [{"path": "paged.spiral", "kind": "loss"}, {"path": "paged.train_ms", "kind": "time"},
                       {"path": "paged.long.gain", "kind": "gain"}]}


def check(tmp_path, baseline, latest, *extra):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(baseline))
    b.write_text(json.dumps(latest))
    return regress.main(["--baseline", str(a), "--latest", str(b), *extra])


@pytest.mark.parametrize("latest, code", [
    (dict(), 0),
    (dict(loss=0.2 * 1.04, time_ms=10.9, gain=0.5 * 0.96), 0),   # inside every band
    (dict(loss=0.1), 0),                                          # improvements pass
    (dict(loss=0.2 * 1.06), 1),                                   # loss +6 % > 5 %
    (dict(time_ms=11.2), 1),                                      # time +12 % > 10 %
    (dict(gain=0.5 * 0.94), 1),                                   # gain −6 % < −5 %
])
def test_rules(tmp_path, capsys, latest, code):
    assert check(tmp_path, report(), report(**latest)) == code
    out = capsys.readouterr().out
    assert ("FAIL" in out) == bool(code)


def test_tolerances_are_options(tmp_path):
    assert check(tmp_path, report(), report(loss=0.2 * 1.06), "--max-loss-regression-pct", "7") == 0


@pytest.mark.parametrize("latest, message", [
    (report(config={"dim": 64, "seeds": [0, 1, 2]}), "config differs in dim"),
    (report(device="cuda"), "device differs"),
    ({**report(), "protocol": "interference"}, "protocol differs"),
])
def test_incomparable_runs_are_refused(tmp_path, capsys, latest, message):
    assert check(tmp_path, report(), latest) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_or_non_numeric_metrics_fail_cleanly(tmp_path, capsys):
    latest = copy.deepcopy(report())
    del latest["metrics"]["paged"]["spiral"]
    assert check(tmp_path, report(), latest) == 1
    assert "no metric 'paged.spiral'" in capsys.readouterr().err
    latest = copy.deepcopy(report())
    latest["metrics"]["paged"]["train_ms"]["mean"] = "fast"
    assert check(tmp_path, report(), latest) == 1
    assert "not a number" in capsys.readouterr().err
    assert check(tmp_path, report(), report(device="cuda"), "--allow-device-change") == 0


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
