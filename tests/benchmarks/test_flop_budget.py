"""benchmarks/flop_budget.py: its FLOP counts against closed forms and torch's own counter, its ceilings
recomputed from the seconds it wrote."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers.benchmark_scripts import load_benchmark
from ttmem.models import build_model

flop_budget = load_benchmark("flop_budget")


def test_dense_flops_of_a_transformer_step_are_six_per_weight_per_token():
    """Every product of a Transformer's step outside attention is a linear layer's: forward 2·N·in·out, backward
    4·N·in·out (input and weight gradients), so 6 · tokens · Σ linear weights, the tied output head included."""
    torch.manual_seed(0)
    model = build_model("transformer-tiny")
    batch, seq = 2, 16
    calls = flop_budget.record_step(flop_budget.training_step(model, batch, seq, "cpu")).calls
    counted = sum(n * flop_budget.product_flops(k) for k, n in calls.items())
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert counted == 6 * batch * seq * linear_weights
    assert all(key[0] in ("mm", "addmm") for key in calls)  # attention is sdpa, not batched products


@pytest.mark.parametrize("name", ["lmm-tiny", "mac-tiny"])
def test_product_flops_match_torch_flop_counter(name):
    torch.manual_seed(0)
    model = build_model(name)
    step = flop_budget.training_step(model, 2, 24, "cpu")
    calls = flop_budget.record_step(step).calls
    with FlopCounterMode(display=False) as counter:
        step()
    per_op = counter.get_flop_counts()["Global"]
    torch_total = sum(v for op, v in per_op.items() if op.__name__.split(".")[0] in ("mm", "addmm", "bmm", "baddbmm"))
    ours = sum(n * flop_budget.product_flops(k) for k, n in calls.items())
    assert ours == torch_total
    assert any(key[0] in ("bmm", "baddbmm") for key in calls)  # the memory engine's per-sequence products


def test_replay_handles_broadcast_operands():
    """A recorded operand may be expanded (stride 0 over the batch, e.g. the memory's initial weights)."""
    key = ("bmm", ((3, 4, 5), (20, 5, 1), torch.float32), ((3, 5, 6), (0, 6, 1), torch.float32))
    assert flop_budget.product_flops(key) == 2 * 3 * 4 * 5 * 6
    assert flop_budget.replay_seconds(key, 2) > 0


def test_table_and_ceilings_from_written_values(tmp_path):
    out = tmp_path / "budget.json"
    flop_budget.main(["--archs", "transformer", "lmm", "--batch", "1", "--seqs", "32", "--steps", "1",
                      "--replays", "1", "--threads", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["tables"]["32"]
    peer, lmm = rows["transformer-tiny"], rows["lmm-tiny"]
    assert peer["batched_flops"] == 0 and lmm["batched_flops"] > 0
    for row in (peer, lmm):
        assert row["matmul_s"] == pytest.approx(row["dense_matmul_s"] + row["batched_matmul_s"])
        assert row["other_s"] == pytest.approx(row["step_s"] - row["matmul_s"])
        assert row["ceiling_ratio"] == pytest.approx(peer["step_s"] / row["matmul_s"])
        assert row["ceiling_ratio_peer_overhead"] == pytest.approx(peer["step_s"] / (row["matmul_s"] + peer["other_s"]))
        assert row["speed_ratio"] == pytest.approx(peer["step_s"] / row["step_s"])
    assert lmm["flops_ratio"] == pytest.approx(lmm["flops"] / peer["flops"])


def test_bad_arguments_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        flop_budget.main(["--steps", "0"])
    assert "--steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        flop_budget.main(["--archs", "lmm", "--set", "chunk_sise=64"])
    assert "--set: unknown ModelConfig field(s): chunk_sise" in capsys.readouterr().err


def test_overrides_reach_the_models_but_not_the_peer():
    rows = flop_budget.run_table(["transformer", "lmm"], "transformer", 1, 32, 1, 1, {"chunk_size": 32})
    base = flop_budget.run_table(["transformer", "lmm"], "transformer", 1, 32, 1, 1)
    assert rows["transformer-tiny"]["flops"] == base["transformer-tiny"]["flops"]
    assert rows["lmm-tiny"]["batched_flops"] != base["lmm-tiny"]["batched_flops"]  # one chunk of 32, not two of 16


def test_other_kernels_and_their_bytes_are_counted_views_left_out():
    a, b = torch.randn(4, 5), torch.randn(4, 5)

    def work():
        c = a + b          # one kernel: two inputs, one output
        c.view(-1)         # a view: not a kernel that computes
        c.mul_(2.0)        # in place: one kernel, the tensor read and written
        c @ b.t()          # a product: counted as a product, not here

    recorder = flop_budget.record_step(work)
    assert recorder.other_kernels == 2
    assert recorder.other_bytes == (3 + 2) * 20 * 4
    assert sum(recorder.calls.values()) == 1
