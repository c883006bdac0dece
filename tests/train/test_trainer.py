"""Trainer: config handling, schedule, atomic checkpoints, exact resume, accumulation, NaN, DDP, SIGTERM."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.train_models import tiny_lm
from ttmem.train import Trainer, TrainingDiverged, read_log, resolve_config
from ttmem.train import checkpoint as ckpt
from ttmem.train.optim import warmup_cosine

ROOT = Path(__file__).resolve().parents[2]
MODELS = str(ROOT / "tests" / "helpers" / "train_models.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}




@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]
    path.write_text("".join(lines))
    return path


def tiny_config(out_dir: Path, data: Path, *extra: str):
    return resolve_config(
        None,
        [
            f"model={MODELS}:tiny_lm",
            f"data={data}",
            f"out_dir={out_dir}",
            "baseline=none",
            "report=false",
            "seq_len=32",
            "batch_size=4",
            "steps=8",
            "warmup_steps=2",
            "log_every=1",
            "eval_every=4",
            "eval_tokens=512",
            "ckpt_every=100",
            "aux_task=mqar",
            "aux_fraction=0.5",
            "device=cpu",  # these tests hold CPU arithmetic; a GPU (auto) would change precision and reduction order
            *extra,
        ],
    )


def losses(out_dir: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(out_dir / "log.jsonl") if "loss" in r]


def test_config_file_overrides_and_unknown_keys(tmp_path):
    (tmp_path / "c.toml").write_text("lr = 0.01\nsteps = 7\nbetas = [0.8, 0.9]\n[model_args]\ndim = 16\n")
    (tmp_path / "c.yaml").write_text("lr: 0.02\ncompile: true\n")
    cfg = resolve_config(tmp_path / "c.toml", ["steps=9", "model_args.dropout=0.1"])
    assert (cfg.lr, cfg.steps, cfg.betas, cfg.model_args) == (
        0.01,
        9,
        (0.8, 0.9),
        {"dim": 16, "dropout": 0.1},
    )
    assert resolve_config(tmp_path / "c.yaml").compile is True
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rate'; valid keys: model, "):
        resolve_config(None, ["learning_rate=1"])
    (tmp_path / "bad.toml").write_text("optimiser = 'sgd'\n")
    with pytest.raises(ValueError, match="unknown config key 'optimiser'"):
        resolve_config(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="'steps' expects int, got 'many'"):
        resolve_config(None, ["steps=many"])
    with pytest.raises(ValueError, match="key=value"):
        resolve_config(None, ["steps"])
    with pytest.raises(ValueError, match="config file not found"):
        resolve_config(tmp_path / "missing.yaml")


def test_warmup_cosine_matches_closed_form():
    f = warmup_cosine(10, 110, 0.1)
    assert [f(s) for s in range(3)] == [0.1, 0.2, 0.3]
    assert f(9) == 1.0 and f(10) == 1.0
    assert math.isclose(f(60), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert math.isclose(f(110), 0.1) and math.isclose(f(500), 0.1)


def test_checkpoints_are_atomic_and_corrupt_ones_refused(tmp_path, monkeypatch):
    good = ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 3), {"step": 3, "w": torch.ones(2)})
    # A save that dies mid-write leaves the previous checkpoint as the newest and no new file.
    real_save = torch.save

    def dying_save(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 6), {"step": 6})
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.latest_checkpoint(tmp_path) == good and not list(tmp_path.glob(".*tmp*"))
    # A temporary folder left by a killed process is never listed.
    (tmp_path / ".step-0000009.tmp-999").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert torch.equal(ckpt.load_checkpoint(good)["w"], torch.ones(2))
    truncated = ckpt.checkpoint_path(tmp_path, 12)
    shutil.copytree(good, truncated)
    (truncated / "trainer.pt").write_bytes((good / "trainer.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        ckpt.load_checkpoint(truncated)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a ttmem checkpoint"):
        ckpt.load_checkpoint(tmp_path / "foreign.pt")


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, text_file):
    extra = ("model_args.dropout=0.2",)  # dropout makes the RNG state matter
    Trainer(tiny_config(tmp_path / "a", text_file, *extra)).fit()

    def stop_at_3(trainer, record):
        if record["step"] == 3:
            trainer.request_stop("test")

    stopped = Trainer(tiny_config(tmp_path / "b", text_file, *extra), on_step=stop_at_3).fit()
    assert stopped.interrupted == "test" and stopped.step == 3
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "b" / "checkpoints")] == [3]
    resumed = Trainer(tiny_config(tmp_path / "b", text_file, *extra)).fit(resume=True)
    assert resumed.step == 8
    full, pieced = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _, _ in full] == list(range(1, 9)) and pieced == full  # exactly, step for step
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "a" / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "b" / "checkpoints"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # A fresh run refuses to overwrite an existing run's checkpoints.
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(tiny_config(tmp_path / "b", text_file)).fit()


def test_gradient_accumulation_matches_one_big_batch(tmp_path, text_file):
    Trainer(tiny_config(tmp_path / "one", text_file, "steps=4")).fit()
    Trainer(tiny_config(tmp_path / "acc", text_file, "steps=4", "grad_accum=4")).fit()
    for (s1, l1, g1), (s2, l2, g2) in zip(losses(tmp_path / "one"), losses(tmp_path / "acc"), strict=True):
        assert s1 == s2 and abs(l1 - l2) < 1e-5 and abs(g1 - g2) < 1e-4


def test_mismatched_checkpoint_is_refused_and_kept(tmp_path, text_file):
    Trainer(tiny_config(tmp_path / "r", text_file, "steps=2")).fit()
    before = ckpt.list_checkpoints(tmp_path / "r" / "checkpoints")
    with pytest.raises(ValueError, match="was written for model"):
        Trainer(tiny_config(tmp_path / "r", text_file, "steps=4", "model_args.dim=16")).fit(resume=True)
    assert ckpt.list_checkpoints(tmp_path / "r" / "checkpoints") == before


def test_nan_loss_stops_and_keeps_checkpoints(tmp_path, text_file):
    cfg = tiny_config(
        tmp_path / "n",
        text_file,
        f"model={MODELS}:nan_lm",
        "model_args.nan_after=4",
        "ckpt_every=2",
        "steps=10",
        "keep_checkpoints=5",
    )
    with pytest.raises(TrainingDiverged, match="diverged at step 4.*last checkpoint kept"):
        Trainer(cfg).fit()
    found = ckpt.list_checkpoints(tmp_path / "n" / "checkpoints")
    assert [s for s, _ in found] == [2]
    assert all(torch.isfinite(t).all() for t in ckpt.load_checkpoint(found[0][1])["model"].values())


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_non_finite_weights_after_a_step_stop_the_run(tmp_path, text_file):
    """An optimizer step that overflows the weights (finite loss and gradients) stops the run before any
    checkpoint of them is written; earlier checkpoints stay."""
    trainer = Trainer(tiny_config(tmp_path / "o", text_file, "ckpt_every=1", "keep_checkpoints=5"))
    real_step, calls = trainer.optimizer.step, []

    def overflowing_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("inf")
        return out

    trainer.optimizer.step = overflowing_step
    with pytest.raises(TrainingDiverged, match="diverged at step 3: the adamw step made weights non-finite.*kept"):
        trainer.fit()
    found = ckpt.list_checkpoints(tmp_path / "o" / "checkpoints")
    assert [s for s, _ in found] == [1, 2]
    assert all(torch.isfinite(t).all() for t in ckpt.load_checkpoint(found[-1][1])["model"].values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tmp_path, text_file, strategy):
    args = [
        f"model={MODELS}:tiny_lm",
        f"data={text_file}",
        "baseline=none",
        "report=false",
        "seq_len=32",
        "batch_size=4",
        "steps=5",
        "warmup_steps=2",
        "log_every=1",
        "eval_every=5",
        "eval_tokens=512",
        "aux_task=mqar",
        "aux_fraction=0.5",
        f"distributed={strategy}",
        "device=cpu",  # two processes on one machine: gloo on the CPU, whatever GPUs it has
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "ttmem",
        "train",
        "--no-progress",
        *args,
        f"out_dir={tmp_path / 'ddp'}",
    ]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    Trainer(resolve_config(None, [*args, f"out_dir={tmp_path / 'single'}"])).fit()
    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert len(ddp) == len(single) == 5
    for (s1, l1, g1), (s2, l2, g2) in zip(ddp, single, strict=True):
        assert s1 == s2 and abs(l1 - l2) < 1e-5 and abs(g1 - g2) < 1e-4
    val = [r for r in read_log(tmp_path / "ddp" / "log.jsonl") if "val_loss" in r]
    val_single = [r for r in read_log(tmp_path / "single" / "log.jsonl") if "val_loss" in r]
    assert abs(val[-1]["val_loss"] - val_single[-1]["val_loss"]) < 1e-5
    # The gathered full weights of the last checkpoint equal the single process's weights.
    multi = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ddp" / "checkpoints"))["model"]
    one = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "single" / "checkpoints"))["model"]
    assert multi.keys() == one.keys()
    assert all(torch.allclose(multi[k], one[k], atol=1e-6) for k in one)


def test_sigterm_writes_a_checkpoint_and_resume_continues(tmp_path, text_file):
    out = tmp_path / "sig"
    args = [
        f"model={MODELS}:tiny_lm",
        f"data={text_file}",
        "baseline=none",
        "report=false",
        "seq_len=32",
        "batch_size=4",
        "steps=100000",
        "log_every=1",
        "ckpt_every=100000",
        "eval_every=100000",
        "eval_tokens=512",
        "aux_task=mqar",
        f"out_dir={out}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttmem", "train", "--no-progress", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.jsonl").exists() or len(losses(out)) < 3:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    found = ckpt.list_checkpoints(out / "checkpoints")
    assert len(found) == 1
    step = found[0][0]
    assert step >= 3 and ckpt.load_checkpoint(found[0][1])["step"] == step
    assert losses(out)[-1][0] == step
    done = subprocess.run(
        [sys.executable, "-m", "ttmem", "train", "--no-progress", "--resume", *args, f"steps={step + 2}"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert [s for s, _, _ in losses(out)] == list(range(1, step + 3))


def test_bf16_autocast_changes_the_arithmetic_not_the_result(tmp_path, text_file):
    fp32 = Trainer(tiny_config(tmp_path / "fp32", text_file, "steps=2"))
    bf16 = Trainer(tiny_config(tmp_path / "bf16", text_file, "steps=2", "precision=bf16"))
    assert fp32.autocast_dtype is None and bf16.autocast_dtype is torch.bfloat16
    fp32.fit(), bf16.fit()
    (_, a, _), (_, b, _) = losses(tmp_path / "fp32")[0], losses(tmp_path / "bf16")[0]
    assert a != b and abs(a - b) < 0.05  # bf16 rounding, same model and data


def test_missing_logging_extras_are_named(tmp_path, text_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ValueError, match=r"tensorboard.*ttmem\[logging\]"):
        Trainer(tiny_config(tmp_path / "tb", text_file, "tensorboard=true")).fit()
    with pytest.raises(ValueError, match=r"wandb.*ttmem\[logging\]"):
        Trainer(tiny_config(tmp_path / "wb", text_file, "wandb=true")).fit()


def test_defaults_are_the_main_job_and_the_baseline_matches_it():
    from ttmem.eval.report import baseline_config

    cfg = resolve_config(None, ["model_args.dim=64"])
    assert (cfg.model, cfg.baseline, cfg.data, cfg.report, cfg.recall) == (
        "lmm_linear-tiny", "swa_transformer-tiny", "stdlib", True, True)
    base = baseline_config(cfg)
    assert (base.model, base.model_args, base.baseline, base.report) == (
        "swa_transformer-tiny",
        {"dim": 64},
        "none",
        False,
    )
    assert (base.data, base.steps, base.seed, base.seq_len) == (cfg.data, cfg.steps, cfg.seed, cfg.seq_len)
    assert Path(base.out_dir) == Path(cfg.out_dir) / "baseline"
    custom = baseline_config(resolve_config(None, [f"model={MODELS}:tiny_lm", "model_args.dim=16"]))
    assert custom.model_args == {}  # a factory's arguments do not carry over to a preset


def test_penalty_hook_is_added_to_the_objective_and_logged(tmp_path, text_file):
    extra = ("steps=3", "optimizer=sgd", "lr=0.1", "grad_clip=0", "weight_decay=0")
    free = Trainer(tiny_config(tmp_path / "free", text_file, *extra))
    free.fit()

    def l2(module: torch.nn.Module) -> torch.Tensor:
        return 2.0 * sum(p.square().sum() for p in module.parameters())

    held = Trainer(tiny_config(tmp_path / "held", text_file, *extra), penalty=l2)
    held.fit()

    def norm(trainer: Trainer) -> float:
        return math.sqrt(sum(float(p.detach().square().sum()) for p in trainer.module.parameters()))

    assert norm(held) < 0.75 * norm(free)
    records = [r for r in read_log(tmp_path / "held" / "log.jsonl") if "loss" in r]
    assert len(records) == 3 and all(r["penalty"] > 0 for r in records)
    assert all("penalty" not in r for r in read_log(tmp_path / "free" / "log.jsonl"))


def test_m3_from_the_trainer_keeps_token_rows_out_of_orthogonalization():
    from ttmem.train import build_from_spec
    from ttmem.train.optim import build_optimizer

    torch.manual_seed(0)
    model, _ = build_from_spec(f"{MODELS}:tiny_lm", {}, 256)
    optimizer = build_optimizer("m3", model, 1e-2, 0.0, (0.9, 0.95))
    flags = {id(p): g["orthogonalize"] for g in optimizer.param_groups for p in g["params"]}
    assert flags[id(model.embed.weight)] is False and flags[id(model.head.weight)] is False
    assert flags[id(model.mlp[0].weight)] is True
    before = model.embed.weight.detach().clone()
    ids = torch.randint(0, 8, (2, 16))  # tokens 0..7 only: the other embedding rows get no gradient
    logits = model(ids)
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1)).backward()
    optimizer.step()
    assert torch.equal(model.embed.weight[8:], before[8:])
    assert not torch.equal(model.embed.weight[:8], before[:8])


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    from ttmem.train.distributed import DistEnv, pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("auto", DistEnv(rank=0, world=2, local_rank=0)) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="device.*no GPU of its own.*device=cpu"):
        pick_device("auto", DistEnv(rank=1, world=2, local_rank=1))
    assert pick_device("cpu", DistEnv(rank=1, world=2, local_rank=1)) == torch.device("cpu")


def test_tiny_lm_is_causal():
    """Changing a later token never changes earlier logits (what next-token training relies on)."""
    torch.manual_seed(0)
    model = tiny_lm().eval()
    ids = torch.randint(0, 256, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 256
    assert torch.allclose(model(ids)[:, :7], model(changed)[:, :7], atol=1e-6)
    assert not torch.allclose(model(ids)[:, 7:], model(changed)[:, 7:])


def test_recompute_keeps_the_losses_and_sets_every_memory_layer(tmp_path, text_file):
    """recompute=true: the memory layers checkpoint segments of chunks (less memory); the run's losses stay the same."""
    from ttmem.layers import NeuralMemory

    model = ["model=lmm-tiny", "model_args.dim=32", "model_args.depth=2", "model_args.heads=2",
             "model_args.chunk_size=8", "steps=3"]
    plain = Trainer(tiny_config(tmp_path / "plain", text_file, *model))
    checkpointed = Trainer(tiny_config(tmp_path / "recompute", text_file, *model, "recompute=true"))
    layers = [m for m in checkpointed.module.modules() if isinstance(m, NeuralMemory)]
    assert len(layers) == 2 and all(m.recompute for m in layers)
    assert not any(m.recompute for m in plain.module.modules() if isinstance(m, NeuralMemory))
    plain.fit()
    checkpointed.fit()
    for (s1, l1, g1), (s2, l2, g2) in zip(losses(tmp_path / "plain"), losses(tmp_path / "recompute"), strict=True):
        assert s1 == s2 and abs(l1 - l2) < 1e-6 and abs(g1 - g2) < 1e-5
