"""Claim 5 (conversion): turn a trained attention layer into a θ-memory and measure what is preserved.

Trains a one-layer softmax-attention model on associative recall (a sequence of N key-value pair
vectors, then a query key; predict the value), then keeps its trained projections W_q, W_k, W_v, W_o
and replaces softmax attention by (a) θMN: W <- W - (W k - v) kᵀ per pair with unit keys (the project's
engine, rule "theta", step 1), read W q; (b) Hebbian linear attention (rule "linear_attention").
Nothing is retrained. Measures, per N (including N beyond the training range): accuracy of each model,
agreement of the converted models' predictions with the attention model's, and cosine similarity of the
mixer outputs. Prints a table; saves runs/theta/attention_to_theta.png/.json.

    PYTHONPATH=src python experiments/theta/attention_to_theta.py
"""

import json

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from _common import parser, setup, table
from torch import nn

from ttmem.memory import memorize


class RecallAttention(nn.Module):
    def __init__(self, keys: int, values: int, dim: int) -> None:
        super().__init__()
        self.key_embed, self.value_embed = nn.Embedding(keys, dim), nn.Embedding(values, dim)
        self.wq, self.wk, self.wv = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.wo = nn.Linear(dim, values)

    def projections(self, ks, vs, query):
        """ks, vs [B, N] token ids, query [B] -> q [B, d], k [B, N, d], v [B, N, d]."""
        pairs = self.key_embed(ks) + self.value_embed(vs)
        return self.wq(self.key_embed(query)), self.wk(pairs), self.wv(pairs)

    def mix(self, q, k, v):
        return F.scaled_dot_product_attention(q[:, None, None], k[:, None], v[:, None])[:, 0, 0]

    def forward(self, ks, vs, query, mixer=None):
        q, k, v = self.projections(ks, vs, query)
        y = (mixer or self.mix)(q, k, v)
        return self.wo(y), y


def theta_mix(q, k, v, rule="theta"):
    b, n, d = k.shape
    kn, qn = F.normalize(k, dim=-1), F.normalize(q, dim=-1)
    _, state = memorize(kn[:, :, None], kn[:, :, None], v[:, :, None], torch.ones(b, n, 1), rule=rule)
    y, _ = memorize(
        qn[:, None, None], qn[:, None, None], torch.zeros(b, 1, 1, d), torch.zeros(b, 1, 1), rule=rule, state=state
    )
    return y[:, 0, 0]


def batch(n_pairs, size, keys, values, gen):
    ks = torch.stack([torch.randperm(keys, generator=gen)[:n_pairs] for _ in range(size)])
    vs = torch.randint(0, values, (size, n_pairs), generator=gen)
    pick = torch.randint(0, n_pairs, (size,), generator=gen)
    return ks, vs, ks[torch.arange(size), pick], vs[torch.arange(size), pick]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--keys", type=int, default=256)
    p.add_argument("--values", type=int, default=64)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--train-pairs", type=int, nargs=2, default=[4, 32])
    p.add_argument("--eval-pairs", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    p.add_argument("--eval-size", type=int, default=1000)
    args = p.parse_args()
    out = setup(args)
    gen = torch.Generator().manual_seed(args.seed)
    model = RecallAttention(args.keys, args.values, args.dim)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        n = int(torch.randint(args.train_pairs[0], args.train_pairs[1] + 1, (1,), generator=gen))
        ks, vs, query, target = batch(n, 64, args.keys, args.values, gen)
        loss = F.cross_entropy(model(ks, vs, query)[0], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == args.steps - 1:
            print(f"train step {step}: loss {loss.item():.3f} (N={n})")
    rows, results = [], []
    mixers = {
        "theta": lambda q, k, v: theta_mix(q, k, v, "theta"),
        "linear_attention": lambda q, k, v: theta_mix(q, k, v, "linear_attention"),
    }
    with torch.no_grad():
        for n in args.eval_pairs:
            ks, vs, query, target = batch(n, args.eval_size, args.keys, args.values, gen)
            logits, y_att = model(ks, vs, query)
            pred_att = logits.argmax(-1)
            row = {"pairs": n, "attention_acc": float((pred_att == target).float().mean())}
            for name, mixer in mixers.items():
                lg, y = model(ks, vs, query, mixer)
                row[f"{name}_acc"] = float((lg.argmax(-1) == target).float().mean())
                row[f"{name}_agree"] = float((lg.argmax(-1) == pred_att).float().mean())
                row[f"{name}_cos"] = float(F.cosine_similarity(y, y_att, dim=-1).mean())
            results.append(row)
            rows.append(list(row.values()))
    print(f"\nconverted without retraining; d={args.dim}, trained on N in {args.train_pairs}")
    print(table(list(results[0]), rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["pairs"] for r in results]
    ax.plot(ns, [r["attention_acc"] for r in results], marker="o", label="trained attention")
    for name in mixers:
        ax.plot(ns, [r[f"{name}_acc"] for r in results], marker="s", label=f"converted: {name}")
        ax.plot(ns, [r[f"{name}_agree"] for r in results], ls="--", label=f"{name} agrees with attention")
    ax.set(xscale="log", xlabel="pairs in context N", ylabel="fraction", title="attention -> θ-memory")
    ax.axvspan(*args.train_pairs, alpha=0.1, color="grey")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "attention_to_theta.png", dpi=120)
    (out / "attention_to_theta.json").write_text(json.dumps(results, indent=1))
    print(f"\nsaved {out / 'attention_to_theta.png'} and .json; chance accuracy = {1 / args.values:.4f}")


if __name__ == "__main__":
    main()
