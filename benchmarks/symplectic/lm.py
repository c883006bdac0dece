"""Language-model comparisons: tiny MAC with gating + paging, and the per-token branch gate, arm against arm.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/symplectic/lm.py mac --threads 1
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/symplectic/lm.py branch_gate --threads 1

Data: byte-level windows of the Python standard library's source (``load_corpus("stdlib")``, no download),
the same batches for every arm of a seed. Every arm trains with the identical optimiser (AdamW, lr, betas,
weight decay, warm-up, clipping), so arms differ only in the model. Metrics per arm and seed: validation bits
per byte on fixed held-out windows, training loss (mean of the last 10 steps), wall time, tokens per second,
page switches per memory layer; per seed the difference to the control and the speed ratio.

- ``mac``: control (MAC, 2 heads), gating (twist gating of the memory's forget rate), gating_paging (+ 2 pages,
  threshold 1.0 × noise level: 4 internal memory heads), heads_x2 (4 heads of the paged model's head width and
  no options: the same internal memory heads; its attention has 4 heads too, which the others do not).
  The fork's version trained on uniform random bytes, where every arm's loss is ln 256.
  ``gating_constant`` (run with ``--arms``) is the gating arm with the twist score replaced by a constant
  (its mean on white noise at this width): does the input-dependent signal matter, or only the damping?
- ``branch_gate``: a Transformer control against the same Transformer with the causal branch gate
  (``--mix``, ``--odd-only``), 2 seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Setup, collect, fmt, markdown_table, write_report  # noqa: E402

from ttmem.data.corpora import load_corpus  # noqa: E402
from ttmem.layers.complexity import ComplexityRecord, noise_level  # noqa: E402
from ttmem.models import ModelConfig, build_model  # noqa: E402


def windows(tokens: np.ndarray, count: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(tokens) - length - 1, (count,), generator=gen).tolist()
    return torch.stack([torch.from_numpy(tokens[s:s + length + 1].astype(np.int64)) for s in starts])


class ConstantSignal(torch.nn.Module):
    """A complexity signal that ignores its input: c_t = value for every token (the ablation arm)."""

    context, has_manifold_state = 1, False

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor, past: torch.Tensor | None = None) -> ComplexityRecord:
        return ComplexityRecord(signal=torch.full_like(x[..., 0], self.value))


def arms(protocol: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    shape = dict(dim=args.dim, depth=args.depth, heads=2, window=32, segment_len=32, chunk_size=8,
                 persistent_tokens=4, mlp_ratio=2.0)
    if protocol == "mac":
        paged = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=1.0,
                     page_threshold_units="noise")
        return {"control": dict(arch="mac", **shape),
                "gating": dict(arch="mac", use_symplectic_gating=True, **shape),
                "gating_constant": dict(arch="mac", use_symplectic_gating=True, **shape),
                "gating_paging": dict(arch="mac", **paged, **shape),
                "heads_x2": dict(arch="mac", **{**shape, "heads": 4, "dim_head": args.dim // 2})}
    return {"control": dict(arch="transformer", **shape),
            "branch_gate": dict(arch="transformer", branch_gate_mix=args.mix, branch_gate_odd_only=args.odd_only,
                                **shape)}


def train_arm(config: ModelConfig, train: torch.Tensor, val: torch.Tensor, args: argparse.Namespace,
              seed: int, constant_signal: bool = False) -> dict[str, float]:
    torch.manual_seed(seed)
    model = build_model(config)
    if constant_signal:
        for module in model.modules():
            if getattr(module, "symplectic", None) is not None:
                module.symplectic.signal = ConstantSignal(noise_level(config.dim))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
    losses = []
    start = time.perf_counter()
    for step in range(args.steps):
        batch = train[step * args.batch:(step + 1) * args.batch]
        logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        nats = statistics.fmean(
            F.cross_entropy(model(v[:, :-1]).logits.reshape(-1, 256), v[:, 1:].reshape(-1)).item()
            for v in val.split(args.batch))
    switches = [int(m.page_switch_events) for m in model.modules() if hasattr(m, "page_switch_events")]
    return {"val_bpb": nats / math.log(2), "train_tail": statistics.fmean(losses[-10:]), "seconds": seconds,
            "tok_per_s": args.steps * args.batch * args.seq_len / seconds,
            "switches_per_layer": statistics.fmean(switches) if switches else 0.0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", choices=("mac", "branch_gate"))
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--val-windows", type=int, default=32)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2 for mac, 0,1 for branch_gate)")
    p.add_argument("--mix", type=float, default=0.15, help="branch gate mix")
    p.add_argument("--odd-only", action="store_true", help="branch gate on odd blocks only")
    p.add_argument("--arms", default=None, help="comma-separated subset of the protocol's arms (control always runs)")
    p.add_argument("--max-bytes", type=int, default=4_000_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="local")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in (args.seeds or ("0,1,2" if args.protocol == "mac" else "0,1")).split(","))
    corpus = load_corpus("stdlib", "bytes", max_bytes=args.max_bytes)
    table = arms(args.protocol, args)
    if not args.arms:
        table.pop("gating_constant", None)  # the ablation runs on request only
    if args.arms:
        chosen = {"control", *(a.strip() for a in args.arms.split(","))}
        unknown = chosen - set(table)
        if unknown:
            p.error(f"--arms: unknown arm(s) {', '.join(sorted(unknown))}; "
                    f"the {args.protocol} arms: {', '.join(table)}")
        table = {name: fields for name, fields in table.items() if name in chosen}
    per_arm: dict[str, list[dict[str, float]]] = {name: [] for name in table}
    for seed in seeds:
        train = windows(corpus.train, args.steps * args.batch, args.seq_len, torch.Generator().manual_seed(seed))
        val = windows(corpus.validation, args.val_windows, args.seq_len, torch.Generator().manual_seed(10_000))
        for name, fields in table.items():
            per_arm[name].append(train_arm(ModelConfig(vocab_size=256, **fields), train, val, args, seed,
                                           constant_signal=name == "gating_constant"))
            print(f"  seed {seed} {name}: {per_arm[name][-1]['val_bpb']:.4f} bpb", file=sys.stderr)
    control = per_arm["control"]
    for runs in per_arm.values():
        for run, ref in zip(runs, control):
            run["minus_control_bpb"] = run["val_bpb"] - ref["val_bpb"]
            run["speed_ratio"] = run["tok_per_s"] / ref["tok_per_s"]
    metrics = {name: collect(runs) for name, runs in per_arm.items()}
    setup = Setup(args.dim, args.seq_len, args.batch, 8, args.steps, seeds,
                  {"depth": args.depth, "lr": args.lr, "warmup": args.warmup, "mix": args.mix,
                   "odd_only": args.odd_only, "val_windows": args.val_windows, "max_bytes": args.max_bytes,
                   **({"arms": sorted(table)} if args.arms else {})})
    checks = [{"path": f"{n}.val_bpb", "kind": "loss"} for n in metrics]
    rows = [[n, fmt(c["val_bpb"]), fmt(c["minus_control_bpb"], 3), fmt(c["speed_ratio"], 3),
             fmt(c["switches_per_layer"], 3)] for n, c in metrics.items()]
    lines = markdown_table(["arm", "val bits/byte", "minus control", "speed ratio", "switches / layer"], rows)
    out = Path(args.out or f"benchmarks/results/symplectic_lm_{args.protocol}.json")
    return write_report(f"lm_{args.protocol}", args.tag, setup, metrics, checks, out, None, lines)


if __name__ == "__main__":
    main()
