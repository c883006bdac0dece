"""In-context capacity of each memory rule with no outer training.

Writes N random (key, value) pairs into a memory at the layer's initial weights and at the gates the layer started
from before this study (momentum keep sigmoid(2), forget sigmoid(−4); ``--momentum-logit``, ``--forget-logit``), then
reads every key back from the final memory and scores retrieval: the cosine between M(k_i) and v_i, and whether
v_i is the nearest of the N values (by cosine) to M(k_i). Keys are unit-norm like the layer's (ℓ2-normalised);
values are Gaussian with the entry scale the layer's value projection produces at initialisation (about 0.22,
norm about 1.2 at head width 32). Also reports the one-write step: how far one write moves M(k) towards v,
|M_1(k) − M_0(k)| / |v − M_0(k)| (exactly θ for the delta rule with a unit key), and the pre-LayerNorm hidden
scale at the initial weights.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/recall/capacity.py \
        --out experiments/recall/results/capacity.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ttmem.memory import MemoryArchitecture, MemoryRule, Objective, memorize

MLP = dict(kind="mlp", depth=2, expansion=4.0, activation="gelu")
RULES = {
    "delta (linear, per token)": MemoryRule("delta", MemoryArchitecture("linear"), Objective("l2"), per_token=True,
                                            zero_init=True),
    "linear l2 chunked": MemoryRule("lin", MemoryArchitecture("linear"), Objective("l2"), zero_init=True),
    "linear l2 chunked + momentum": MemoryRule("lin_m", MemoryArchitecture("linear"), Objective("l2"),
                                               momentum=True, zero_init=True),
    "mlp (no residual norm)": MemoryRule("mlp", MemoryArchitecture(**MLP), Objective("l2")),
    "mlp + momentum + forget": MemoryRule("mlp_mf", MemoryArchitecture(**MLP), Objective("l2"), momentum=True,
                                          forgetting=True),
    "mlp + residual (no norm)": MemoryRule("mlpres", MemoryArchitecture(**MLP, residual=True), Objective("l2"),
                                           momentum=True, forgetting=True),
    "titans (mlp + residual LN)": MemoryRule("titans", MemoryArchitecture(**MLP, residual_norm=True),
                                             Objective("l2"), momentum=True, forgetting=True),
    "mlp + residual LN, no momentum": MemoryRule("mlpln", MemoryArchitecture(**MLP, residual_norm=True),
                                                 Objective("l2")),
}


def pairs(n: int, d: int, value_std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(1, n, 1, d, generator=gen, dtype=torch.float64), dim=-1)
    v = value_std * torch.randn(1, n, 1, d, generator=gen, dtype=torch.float64)
    return k, v


def retrieval(rule: MemoryRule, k: torch.Tensor, v: torch.Tensor, lr: float, momentum: float, forget: float,
              chunk: int, filler: int = 0) -> dict[str, float]:
    """Write the N pairs, then ``filler`` copies of one further pair (as MQAR's query region, mostly one filler
    token, is written too), and read the N keys back."""
    n = k.shape[1]
    keys, values = k, v
    if filler:
        fk, fv = pairs(1, k.shape[-1], float(v.std()), 10_000 + n)
        keys = torch.cat([k, fk.expand(-1, filler, -1, -1)], 1)
        values = torch.cat([v, fv.expand(-1, filler, -1, -1)], 1)
    gates = torch.full((1, keys.shape[1], 1), lr, dtype=k.dtype)
    extra = {}
    if rule.momentum:
        extra["momentum"] = torch.full_like(gates, momentum)
    if rule.forgetting:
        extra["forget"] = torch.full_like(gates, forget)
    _, state = memorize(keys, keys, values, gates, rule=rule, chunk_size=chunk, **extra)
    read = rule.architecture.forward(state.weights, k.transpose(1, 2)).transpose(1, 2)[0, :, 0]  # [N, d]
    target = v[0, :, 0]
    if not bool(torch.isfinite(read).all()):
        return {"cosine": float("nan"), "accuracy": 0.0, "read_norm": float("inf")}
    cos = F.normalize(read, dim=-1) @ F.normalize(target, dim=-1).T  # [N, N]
    return {
        "cosine": float(cos.diagonal().mean()),
        "accuracy": float((cos.argmax(-1) == torch.arange(n)).double().mean()),
        "read_norm": float(read.norm(dim=-1).mean()),
    }


def one_write_step(rule: MemoryRule, d: int, value_std: float, lr: float, seeds: int = 16) -> dict[str, float]:
    ratios, hidden_std = [], []
    for s in range(seeds):
        k, v = pairs(1, d, value_std, 1000 + s)
        gates = torch.full((1, 1, 1), lr, dtype=k.dtype)
        w0 = tuple(w.to(k.dtype) for w in rule.initial_weights(1, d, d))
        w0 = tuple(w.unsqueeze(0) for w in w0)
        before = rule.architecture.forward(w0, k.transpose(1, 2))
        _, state = memorize(k, k, v, gates, rule=rule, chunk_size=1)
        after = rule.architecture.forward(state.weights, k.transpose(1, 2))
        ratios.append(float((after - before).norm() / (v.transpose(1, 2) - before).norm()))
        _, _, pre = rule.architecture.forward_with_cache(w0, k.transpose(1, 2))
        hidden_std.append(float(pre[-1].std(-1).mean()))
    return {"step_ratio": sum(ratios) / seeds, "pre_out_std": sum(hidden_std) / seeds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=32, help="head width (MQAR recipe: dim 64 / 2 heads)")
    p.add_argument("--value-std", type=float, default=0.22)
    p.add_argument("--sizes", default="4,8,16,32")
    p.add_argument("--chunks", default="1,8,32")
    p.add_argument("--lrs", default="0.119,0.5,1.0", help="step sizes θ (0.119 = sigmoid(−2), the layer's init)")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--momentum-logit", type=float, default=2.0)
    p.add_argument("--forget-logit", type=float, default=-4.0)
    p.add_argument("--filler", type=int, default=0, help="copies of one filler pair written after the N pairs")
    p.add_argument("--rules", default="all", help="';'-separated names of RULES, or all")
    p.add_argument("--out", default="experiments/recall/results/capacity.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    momentum, forget = 1 / (1 + math.exp(-args.momentum_logit)), 1 / (1 + math.exp(-args.forget_logit))
    rules = RULES if args.rules == "all" else {name: RULES[name] for name in args.rules.split(";")}
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    start = time.perf_counter()
    for name, rule in rules.items():
        for lr in (float(x) for x in args.lrs.split(",")):
            step = one_write_step(rule, args.dim, args.value_std, lr)
            for chunk in (int(c) for c in args.chunks.split(",")):
                if rule.per_token and chunk != 1:
                    continue
                for n in sizes:
                    scores = [retrieval(rule, *pairs(n, args.dim, args.value_std, s), lr, momentum, forget, chunk,
                                        args.filler) for s in range(args.seeds)]
                    row = {"rule": name, "lr": lr, "chunk": chunk, "pairs": n, **step}
                    for key in ("cosine", "accuracy", "read_norm"):
                        row[key] = sum(sc[key] for sc in scores) / len(scores)
                    rows.append(row)
                    print(f"{name:34s} lr {lr:5.3f} chunk {chunk:2d} N {n:3d}  step {step['step_ratio']:7.3f}  "
                          f"pre-LN std {step['pre_out_std']:.3f}  cos {row['cosine']:6.3f}  "
                          f"acc {row['accuracy']:.3f}  |M(k)| {row['read_norm']:.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "momentum": momentum, "forget": forget,
                               "seconds": time.perf_counter() - start, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
