"""Claim 4 (recall capability): how many key-value associations a fixed-size θ-memory recalls.

Writes N random (unit key, value) pairs, one update per token, then queries every stored key and counts
a recall as correct when the output is closer (cosine) to its own value than to any other stored value.
Memories: θMN and θMN(r) through the project's engine (rule "theta" / "theta_lowrank", step size 1 / 0.1),
Hebbian linear attention (rule "linear_attention") and softmax attention (inverse temperature sqrt(d)) over
a KV cache of all N pairs (storage grows with N). Prints accuracy vs N/d; saves runs/theta/recall.png/.json.

    PYTHONPATH=src python experiments/theta/recall.py
"""

import json

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from _common import parser, setup, table

from ttmem.memory import memorize


def recall_accuracy(y: torch.Tensor, v: torch.Tensor) -> float:
    """y, v: [N, d]; fraction of i whose nearest stored value (cosine) is v_i."""
    sims = F.normalize(y, dim=-1) @ F.normalize(v, dim=-1).T
    return float((sims.argmax(-1) == torch.arange(v.shape[0])).float().mean())


def engine_memory(rule: str, k: torch.Tensor, v: torch.Tensor, step: float = 1.0) -> torch.Tensor:
    n, d = k.shape
    lr = torch.full((1, n, 1), step)
    _, state = memorize(k[None, :, None], k[None, :, None], v[None, :, None], lr, rule=rule)
    zeros = torch.zeros(1, n, 1)
    y = []
    for i in range(n):  # read-only queries: step size 0 leaves the state unchanged
        out, _ = memorize(
            k[None, i : i + 1, None],
            k[None, i : i + 1, None],
            v[None, i : i + 1, None],
            zeros[:, :1],
            rule=rule,
            state=state,
        )
        y.append(out[0, 0, 0])
    return torch.stack(y)


def softmax_attention(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.softmax(k @ k.T * k.shape[1] ** 0.5, -1) @ v  # queries = stored keys; inverse temperature sqrt(d)


@torch.no_grad()
def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--pairs", type=int, nargs="+", default=[8, 16, 32, 48, 64, 96, 128, 256])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lowrank-step", type=float, default=0.1, help="step size 1 diverges for the factorised memory")
    args = p.parse_args()
    out = setup(args)
    memories = {
        "theta (d x d)": lambda k, v: engine_memory("theta", k, v),
        "theta_lowrank (r=16)": lambda k, v: engine_memory("theta_lowrank", k, v, args.lowrank_step),
        "linear_attention": lambda k, v: engine_memory("linear_attention", k, v),
        "softmax KV cache": softmax_attention,
    }
    results = {m: [] for m in memories}
    gen = torch.Generator().manual_seed(args.seed)
    for n in args.pairs:
        accs = {m: [] for m in memories}
        for _ in range(args.repeats):
            k = F.normalize(torch.randn(n, args.dim, generator=gen), dim=-1)
            v = torch.randn(n, args.dim, generator=gen)
            for m, fn in memories.items():
                accs[m].append(recall_accuracy(fn(k, v), v))
        for m in memories:
            results[m].append([n, float(np.mean(accs[m])), float(np.std(accs[m]))])
    rows = [[n, n / args.dim] + [results[m][i][1] for m in memories] for i, n in enumerate(args.pairs)]
    print(f"recall accuracy (mean over {args.repeats} draws), d = {args.dim}")
    print(table(["pairs N", "N/d"] + list(memories), rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in memories:
        s = np.array(results[m])
        ax.errorbar(s[:, 0] / args.dim, s[:, 1], yerr=s[:, 2], marker="o", capsize=2, label=m)
    ax.set(xlabel="stored pairs / d", ylabel="recall accuracy", xscale="log", title=f"associative recall, d={args.dim}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "recall.png", dpi=120)
    (out / "recall.json").write_text(json.dumps(results, indent=1))
    print(f"\nsaved {out / 'recall.png'} and .json")


if __name__ == "__main__":
    main()
