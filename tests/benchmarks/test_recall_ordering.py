"""Smoke test of benchmarks/recall_ordering.py: a tiny sweep runs end to end in seconds and reports what it ran."""

from __future__ import annotations

import json

import pytest

from tests.helpers.benchmark_scripts import BENCHMARKS, load_benchmark

SCRIPT = BENCHMARKS / "recall_ordering.py"



TINY = ["--seq-len", "24", "--pairs", "3", "--steps", "2", "--batch", "2", "--warmup", "1", "--eval-examples", "4",
        "--dim", "16", "--heads", "2", "--window", "4", "--chunk-size", "8", "--segment-len", "8", "--mlp-ratio", "12",
        "--threads", "1"]


def test_tiny_sweep_trains_every_requested_model_at_matched_size(tmp_path, capsys):
    bench = load_benchmark("recall_ordering")
    out = tmp_path / "ordering.json"
    archs = ["swa_transformer", "deltanet", "lmm", "mac"]
    report = bench.main(TINY + ["--archs", ",".join(archs), "--seeds", "0", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["runs"] == report["runs"]
    assert {(r["arch"], r["task"], r["seed"]) for r in saved["runs"]} == {
        (a, t, s) for a in archs for t in ("mqar", "needle") for s in (0,)}
    for run in saved["runs"]:
        half_step = 3 * 16 * 8 * 2 / 2  # a SwiGLU width step of 8 units: 3 * dim * 8 parameters in each of 2 blocks
        assert abs(run["parameters"] - saved["parameter_target"]) <= half_step
        for key, value in run.items():
            if key.startswith(("mqar_", "needle_")):
                assert 0.0 <= value <= 1.0
    printed = capsys.readouterr().out
    assert all(f"| {a} |" in printed for a in archs)
    assert "lmm >= deltanet - 0.05 past the window" in printed
    assert len(saved["claims"]) == 3


def test_cli_rejects_unknown_architectures_and_unmatchable_targets(tmp_path):
    bench = load_benchmark("recall_ordering")
    with pytest.raises(SystemExit):
        bench.main(TINY + ["--archs", "deltanet,nope", "--out", str(tmp_path / "a.json")])
    with pytest.raises(SystemExit, match="raise --mlp-ratio"):
        bench.main(TINY + ["--mlp-ratio", "0.5", "--archs", "mag", "--out", str(tmp_path / "b.json")])


def test_merge_combines_runs_of_one_recipe_and_refuses_another(tmp_path, capsys):
    bench = load_benchmark("recall_ordering")
    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    bench.main(TINY + ["--archs", "deltanet", "--tasks", "mqar", "--seeds", "0", "--out", str(a)])
    bench.main(TINY + ["--archs", "swa_transformer", "--tasks", "mqar", "--seeds", "0", "--out", str(b)])
    capsys.readouterr()
    merged = bench.main(["--merge", str(a), str(b), "--out", str(c)])
    assert [r["arch"] for r in merged["runs"]] == ["deltanet", "swa_transformer"]
    assert "| deltanet |" in capsys.readouterr().out
    other = tmp_path / "other.json"
    bench.main(TINY + ["--archs", "lmm", "--tasks", "mqar", "--seeds", "0", "--steps", "1", "--out", str(other)])
    with pytest.raises(SystemExit, match="different recipe"):
        bench.main(["--merge", str(a), str(other), "--out", str(c)])


def test_parallel_jobs_give_the_runs_of_one_process(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # spawned workers import the script by name
    import recall_ordering as bench

    sweep = TINY + ["--archs", "swa_transformer", "--tasks", "mqar", "--seeds", "0,1"]
    one = bench.main(sweep + ["--out", str(tmp_path / "one.json")])
    two = bench.main(sweep + ["--jobs", "2", "--out", str(tmp_path / "two.json")])
    timeless = [[{k: v for k, v in r.items() if k != "train_seconds"} for r in report["runs"]] for report in (one, two)]
    assert timeless[0] == timeless[1]
    assert [r["seed"] for r in two["runs"]] == [0, 1]


def test_set_reaches_one_architecture_and_rejects_unknown_ones(tmp_path):
    bench = load_benchmark("recall_ordering")
    runs = {output: bench.main(TINY + ["--archs", "mac", "--tasks", "mqar", "--seeds", "0",
                                       "--set", f"mac.mac_output={output}", "--out", str(tmp_path / f"{output}.json")])
            for output in ("product", "gate")}
    assert runs["gate"]["args"]["model_args"] == {"mac": {"mac_output": "gate"}}
    assert runs["gate"]["mlp_ratios"]["mac"] < runs["product"]["mlp_ratios"]["mac"]  # the gate's weights are paid for
    # a shared shape field set for one architecture overrides the shared value, in matching and in training alike
    narrow = bench.main(TINY + ["--archs", "swa_transformer", "--tasks", "mqar", "--seeds", "0",
                                "--set", "swa_transformer.window=2", "--out", str(tmp_path / "narrow.json")])
    assert narrow["args"]["model_args"] == {"swa_transformer": {"window": 2}} and len(narrow["runs"]) == 1
    with pytest.raises(SystemExit):
        bench.main(TINY + ["--set", "nope.x=1", "--out", str(tmp_path / "c.json")])
