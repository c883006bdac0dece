"""`ttmem bench regress`: the benchmark regression guard's rules (pass, fail, refuse) through the command line."""

from __future__ import annotations

import copy
import json

import pytest

from ttmem.cli import _parser, main


def report(loss=0.2, time_ms=10.0, gain=0.5, config=None, device="cpu"):
    cell = lambda v: {"mean": v, "min": v, "max": v, "values": [v]}  # noqa: E731
    return {"protocol": "symplectic", "tag": "t", "config": config or {"dim": 32, "seeds": [0, 1, 2]},
            "device": {"device": device, "torch": "2.13.0", "threads": 1},
            "metrics": {"paged": {"spiral": cell(loss), "train_ms": cell(time_ms), "long": {"gain": cell(gain)}}},
            "checks": [{"path": "paged.spiral", "kind": "loss"}, {"path": "paged.train_ms", "kind": "time"},
                       {"path": "paged.long.gain", "kind": "gain"}]}


def check(tmp_path, baseline, latest, *extra):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(baseline if isinstance(baseline, str) else json.dumps(baseline))
    b.write_text(latest if isinstance(latest, str) else json.dumps(latest))
    return main(["bench", "regress", "--baseline", str(a), "--latest", str(b), *extra])


def one_line_error(capsys, message):
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("ttmem bench regress: error: ")


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
    assert out.strip().splitlines()[-1] == f"{3 - code} passed, {code} failed"


def test_the_table_reports_the_delta_computed_by_hand(tmp_path, capsys):
    assert check(tmp_path, report(), report(time_ms=12.5)) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if "train_ms" in line)
    assert "| 10 | 12.5 | +25.00 | FAIL |" in row  # (12.5 − 10) / 10 = +25 %


def test_tolerances_are_options(tmp_path):
    assert check(tmp_path, report(), report(loss=0.2 * 1.06), "--max-loss-regression-pct", "7") == 0
    assert check(tmp_path, report(), report(time_ms=11.2), "--max-time-regression-pct", "15") == 0
    assert check(tmp_path, report(), report(gain=0.5 * 0.94), "--min-gain-regression-pct", "7") == 0


@pytest.mark.parametrize("latest, message", [
    (report(config={"dim": 64, "seeds": [0, 1, 2]}), "config differs in dim"),
    (report(device="cuda"), "device differs"),
    ({**report(), "protocol": "interference"}, "protocol differs"),
])
def test_incomparable_runs_are_refused(tmp_path, capsys, latest, message):
    assert check(tmp_path, report(), latest) == 1
    one_line_error(capsys, message)


def test_a_device_change_can_be_allowed(tmp_path):
    assert check(tmp_path, report(), report(device="cuda"), "--allow-device-change") == 0


def test_missing_or_non_numeric_metrics_fail_cleanly(tmp_path, capsys):
    latest = copy.deepcopy(report())
    del latest["metrics"]["paged"]["spiral"]
    assert check(tmp_path, report(), latest) == 1
    one_line_error(capsys, "no metric 'paged.spiral'")
    latest = copy.deepcopy(report())
    latest["metrics"]["paged"]["train_ms"]["mean"] = "fast"
    assert check(tmp_path, report(), latest) == 1
    one_line_error(capsys, "not a number")
    baseline = copy.deepcopy(report())
    baseline["checks"][0]["kind"] = "speed"
    assert check(tmp_path, baseline, report()) == 1
    one_line_error(capsys, "has kind 'speed'")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"protocol": "symplectic"}), "no 'config'"),
])
def test_bad_files_are_one_line(tmp_path, capsys, content, message):
    assert check(tmp_path, content, report()) == 1
    one_line_error(capsys, message)


def test_missing_file_and_directory_are_one_line(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(report()))
    assert main(["bench", "regress", "--baseline", str(tmp_path / "none.json"), "--latest", str(good)]) == 1
    one_line_error(capsys, "none.json: no such file")
    assert main(["bench", "regress", "--baseline", str(good), "--latest", str(tmp_path)]) == 1
    one_line_error(capsys, "is a directory")


def test_bench_without_regress_still_measures_throughput_and_regress_needs_both_reports(capsys):
    args = _parser().parse_args(["bench", "--model", "mac-tiny", "--iters", "2"])
    assert args.bench_command is None and args.iters == 2
    assert main(["bench", "regress", "--baseline", "a.json"]) == 2
    err = capsys.readouterr().err
    assert "--latest" in err and len(err.strip().splitlines()) == 1
