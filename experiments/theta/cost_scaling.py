"""Claim 3 (cost): θMN costs O(d²) and θMN(r) O(r d) per token, attention with a KV cache O(n d).

For each single-layer decoder (reference_layers) measures, per token: the analytic FLOPs, the FLOPs
FlopCounterMode records on the real forward pass, and the median wall time of a decode step, (a) versus
context length n at fixed width and (b) versus width d at fixed context. Fits log-log slopes of time
against n and d. Prints tables; saves runs/theta/cost_scaling.png/.json.

    PYTHONPATH=src python experiments/theta/cost_scaling.py
"""

import json

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import parser, setup, table

from ttmem.security.flops import decoder_step_flops, measure_flops
from ttmem.security.reference_layers import DECODERS
from ttmem.security.timing import Trial, run_trials

KINDS = ["theta", "theta_lowrank", "titans_mlp", "normalized_linear_attention", "kv_attention"]


def step_trial(layer, dim: int, context: int) -> Trial:
    state = layer.init_state(1, context)
    x = torch.randn(1, dim)
    return Trial(run=lambda _a: layer.step(x, state))


def slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


@torch.no_grad()
def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--contexts", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--trials", type=int, default=100)
    args = p.parse_args()
    out = setup(args)
    kw = dict(rank=args.rank, hidden=args.hidden)
    results = {"by_context": {}, "by_dim": {}}
    rows = []
    for kind in KINDS:
        layer = DECODERS[kind](
            args.dim,
            args.heads,
            **(
                {"rank": args.rank}
                if kind == "theta_lowrank"
                else {"hidden": args.hidden}
                if kind == "titans_mlp"
                else {}
            ),
        )
        trials = {n: step_trial(layer, args.dim, n) for n in args.contexts}
        times = run_trials(trials, args.trials, 10, args.seed).samples
        for n in args.contexts:
            analytic = decoder_step_flops(kind, args.dim, args.heads, context=n, **kw)
            measured = measure_flops(lambda t=trials[n]: t.run(None))
            med = float(np.median(times[n]))
            results["by_context"].setdefault(kind, []).append([n, analytic, measured, med])
            rows.append([kind, n, analytic, measured, med / 1e3])
    print(f"(a) per-token cost vs context length, d={args.dim}, heads={args.heads}")
    print(table(["decoder", "context", "FLOPs analytic", "FLOPs measured", "median us"], rows))
    rows = []
    for kind in KINDS:
        series = np.array(results["by_context"][kind], dtype=float)
        rows.append([kind, slope(series[:, 0], series[:, 3]), slope(series[:, 0], series[:, 2])])
    print("\nlog-log slope vs context length (0 = flat, 1 = linear)")
    print(table(["decoder", "time slope", "FLOP slope"], rows))
    rows = []
    for kind in KINDS:
        for d in args.dims:
            layer = DECODERS[kind](
                d,
                1,
                **(
                    {"rank": args.rank}
                    if kind == "theta_lowrank"
                    else {"hidden": args.hidden}
                    if kind == "titans_mlp"
                    else {}
                ),
            )
            trial = step_trial(layer, d, 1024)
            med = float(np.median(run_trials({0: trial}, args.trials, 10, args.seed).samples[0]))
            core = decoder_step_flops(kind, d, 1, context=1024, **kw) - 8 * d * d  # without q/k/v/out projections
            results["by_dim"].setdefault(kind, []).append([d, core, med])
            rows.append([kind, d, core, med / 1e3])
    print("\n(b) per-token cost vs width d (context 1024, one head); core FLOPs exclude the 8 d² projections")
    print(table(["decoder", "d", "core FLOPs", "median us"], rows))
    rows = []
    for kind in KINDS:
        series = np.array(results["by_dim"][kind], dtype=float)
        rows.append([kind, slope(series[:, 0], series[:, 1]), slope(series[:, 0], series[:, 2])])
    print("\nlog-log slope vs d (core FLOPs: 2 = O(d²), 1 = O(d)); time includes projections and overheads")
    print(table(["decoder", "core FLOP slope", "time slope"], rows))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for kind in KINDS:
        s = np.array(results["by_context"][kind], dtype=float)
        ax[0].plot(s[:, 0], s[:, 3] / 1e3, marker="o", label=f"{kind} (measured)")
        ax[1].plot(s[:, 0], s[:, 1], marker="o", label=kind)
    ax[0].set(
        xscale="log",
        yscale="log",
        xlabel="context length n",
        ylabel="median decode step (us)",
        title=f"wall time, d={args.dim}",
    )
    ax[1].set(
        xscale="log", yscale="log", xlabel="context length n", ylabel="FLOPs per token (analytic)", title="theory"
    )
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cost_scaling.png", dpi=120)
    (out / "cost_scaling.json").write_text(json.dumps(results, indent=1))
    print(f"\nsaved {out / 'cost_scaling.png'} and .json")


if __name__ == "__main__":
    main()
