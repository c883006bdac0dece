"""Trace one training run per parameter: which weights grow, where the gradient norm goes, how big each step is.

Built to find out why an optimizer diverges at some learning rate (the README's M3 section uses it on
``mac-tiny``). One run through `ttmem.train.Trainer` with the settings of ``benchmarks/optimizers.py``
(same overrides, so the same initial weights, batches and schedule as that benchmark's run of the same
model, optimizer, lr and seed). Per step: training loss and the gradient norm before clipping. Every
``--every`` steps (and steps 1-3), per parameter: weight RMS, update RMS (the parameter's change in that
step), gradient norm after clipping and the parameter's share of the squared gradient norm.

The summary printed at the end: the steps where the gradient norm first exceeds 10x and 1e3x its median
over the first ``--warmup-steps`` steps after warm-up, the median and largest growth of hidden-matrix
weight RMS (relative to step 1) at chosen steps, the parameters with the largest growth, and the
parameters holding the largest gradient shares at the first blow-up step. Writes everything to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/m3_trace.py --model mac-tiny --optimizer m3-precondition-shape --lr 1e-2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import optimizers as bench
import torch

from ttmem.data import load_corpus
from ttmem.optim.m3 import token_matrices
from ttmem.train import Trainer


def parameter_stats(trainer: Trainer, before: dict[int, torch.Tensor], grads: dict[int, float]) -> dict[str, Any]:
    total = sum(g * g for g in grads.values()) or 1.0
    tokens = {id(p) for p in token_matrices(trainer.module)}
    out = {}
    for name, param in trainer.module.named_parameters():
        if id(param) not in before:
            continue
        weight, previous = param.detach(), before[id(param)]
        out[name] = {"weight_rms": weight.square().mean().sqrt().item(),
                     "weight_rms_before": previous.square().mean().sqrt().item(),
                     "update_rms": (weight - previous).square().mean().sqrt().item(),
                     "grad_norm": grads[id(param)], "grad_share": grads[id(param)] ** 2 / total,
                     "hidden_matrix": param.ndim >= 2 and id(param) not in tokens}
    return out


def trace(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    settings = bench.parse_args(["--model", args.model, "--steps", str(args.steps), "--batch-size",
                                 str(args.batch_size), "--seq-len", str(args.seq_len), "--seeds", str(args.seed)])
    out_dir = bench.fresh(Path(args.runs_dir) / f"trace-{args.model}-{args.optimizer}-lr{args.lr:g}")
    config, command = bench.run_config([*bench.shared_overrides(settings, args.steps, args.model, args.seed),
                                        f"optimizer={args.optimizer}", f"lr={args.lr:g}"], out_dir)
    corpus = load_corpus(config.data, config.tokenizer, val_fraction=config.val_fraction,
                         max_bytes=config.max_bytes or None)
    steps: list[dict[str, Any]] = []
    trainer = Trainer(config, corpus=corpus, on_step=lambda t, record: steps.append(
        {"step": t.step, "loss": record["loss"], "grad_norm": record["grad_norm"]}))
    optimizer, original_step, params = trainer.optimizer, trainer.optimizer.step, {}

    def traced_step(*a: Any, **k: Any) -> Any:
        count = len(steps) + 1  # on_step runs after the optimizer step
        record = count <= 3 or count % args.every == 0
        live = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        before = {id(p): p.detach().clone() for p in live} if record else {}
        grads = {id(p): p.grad.norm().item() for p in live} if record else {}
        result = original_step(*a, **k)
        if record:
            params[count] = parameter_stats(trainer, before, grads)
        return result

    warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")
    optimizer.step = traced_step  # the trainer calls optimizer.step(); the scheduler only warns about it
    start = time.perf_counter()
    result = trainer.fit()
    return {"command": command, "val_bpb": result.validation["bpb"], "seconds": time.perf_counter() - start,
            "steps": steps, "params": params}


def summary(data: dict[str, Any], warmup: int, at: list[int], top: int) -> None:
    norms = [s["grad_norm"] for s in data["steps"]]
    base = statistics.median(norms[warmup:2 * warmup] or norms)
    blowups = {factor: next((i + 1 for i, n in enumerate(norms) if i >= warmup and n > factor * base), None)
               for factor in (10, 1e3)}
    print(f"{data['command']}\nval bpb {data['val_bpb']:.4f}; loss {data['steps'][0]['loss']:.2f} -> "
          f"{data['steps'][-1]['loss']:.2f}; gradient norm median {base:.3g} after warm-up, first >10x at step "
          f"{blowups[10]}, first >1e3x at step {blowups[1e3]}, largest {max(norms):.3g}")
    initial = {n: v["weight_rms_before"] for n, v in data["params"][1].items()}
    for step in at:
        if step not in data["params"]:
            continue
        hidden = {n: v["weight_rms"] for n, v in data["params"][step].items() if v["hidden_matrix"]}
        growth = {n: rms / initial[n] for n, rms in hidden.items() if initial[n] > 0}
        largest = sorted(growth, key=growth.get, reverse=True)[:top]
        zero = {n: rms for n, rms in hidden.items() if initial[n] == 0}
        print(f"step {step}: hidden-matrix weight RMS / initial: median {statistics.median(growth.values()):.2f}, "
              f"largest " + ", ".join(f"{n} {growth[n]:.1f}x" for n in largest)
              + (f"; zero-initialised matrices: RMS up to {max(zero.values()):.3g}" if zero else ""))
    spike = blowups[10]
    if spike is not None:
        recorded = [s for s in data["params"] if s >= spike]
        if recorded:
            shares = data["params"][recorded[0]]
            largest = sorted(shares, key=lambda n: shares[n]["grad_share"], reverse=True)[:top]
            print(f"gradient shares at step {recorded[0]}: "
                  + ", ".join(f"{n} {shares[n]['grad_share']:.2f}" for n in largest))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mac-tiny")
    parser.add_argument("--optimizer", default="m3")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--every", type=int, default=5, help="steps between per-parameter records")
    parser.add_argument("--at", type=int, nargs="*", default=[15, 60], help="steps of the growth summary")
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs-dir", default="benchmarks/results/trace-runs")
    parser.add_argument("--out", default=None, help="JSON (default: benchmarks/results/trace-MODEL-OPT-lrLR.json)")
    args = parser.parse_args(argv)
    if args.lr <= 0 or args.steps < 1 or args.every < 1:
        parser.error("--lr must be > 0, --steps and --every >= 1")
    data = trace(args)
    out = Path(args.out or f"benchmarks/results/trace-{args.model}-{args.optimizer}-lr{args.lr:g}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    warmup = max(1, args.steps // 10)
    summary(data, warmup, args.at, args.top)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
