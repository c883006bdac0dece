"""Ablation ladder on MQAR: the lmm model shell with one memory change at a time, from DeltaNet to Titans.

Every variant is the ``lmm-tiny`` preset narrowed to the recipe's shape (dim, depth, heads, chunk size), the same
projections, short conv, gates plumbing, output norm and gate, MLPs and trainer; only the memory rule (and, for
some variants, the layer's ``max_lr``) changes. Trained from the same torch seed on the same MQAR batches with
``ttmem.eval.mqar.train_mqar`` and scored with ``mqar_accuracy_by_distance`` (queries near and beyond the reach
``depth * window`` of a sliding-window stack, to match ``benchmarks/mqar_recall.py``).

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/recall/ladder.py --variants delta,titans --seeds 0 \\
        --out experiments/recall/results/ladder.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ttmem.eval.mqar import MQARRecipe, mqar_accuracy_by_distance, train_mqar
from ttmem.layers import NeuralMemory
from ttmem.memory import MemoryArchitecture, MemoryRule, Objective, get_rule
from ttmem.models import build_model, count_parameters

_MLP = dict(kind="mlp", depth=2, expansion=4.0, activation="gelu")
# The layer's gate logits before this study (step −2, momentum 2, forget −4): every variant starts from them
# unless it says otherwise, so the ladder reproduces whatever the layer's current defaults are.
FORMER_GATE_BIAS = {"lr": -2.0, "momentum": 2.0, "forget": -4.0}
_LINEAR = MemoryArchitecture("linear")


@dataclass(frozen=True)
class Variant:
    rule: MemoryRule
    layer: dict = field(default_factory=dict)  # NeuralMemory attributes to set after construction
    chunk_size: int | None = None                # None: the recipe's
    zero_last: bool = False                      # start the memory's last layer at zero (M_0(x) = x or 0)
    gate_bias: dict = field(default_factory=dict)  # initial gate logits by name: "lr", "momentum", "forget"


def _titans(**changes) -> MemoryRule:
    return get_rule("titans").replace(**changes)


VARIANTS_LINEAR_MF = MemoryRule("linear-chunked+mom+forget", _LINEAR, Objective("l2"), momentum=True, forgetting=True,
                                zero_init=True)
VARIANTS: dict[str, Variant] = {
    # the linear end: DeltaNet's rule (exact per token), then chunked gradients, momentum, forgetting
    "delta": Variant(get_rule("delta")),
    "linear-chunked": Variant(MemoryRule("linear-chunked", _LINEAR, Objective("l2"), zero_init=True)),
    "linear-chunked+mom": Variant(MemoryRule("linear-chunked+mom", _LINEAR, Objective("l2"), momentum=True,
                                             zero_init=True)),
    "linear-chunked+mom+forget": Variant(VARIANTS_LINEAR_MF),
    # the deep memory: plain MLP, MLP with residual, MLP with residual + LayerNorm (= titans)
    "mlp": Variant(_titans(name="mlp", architecture=MemoryArchitecture(**_MLP))),
    "mlp+res": Variant(_titans(name="mlp+res", architecture=MemoryArchitecture(**_MLP, residual=True))),
    "titans": Variant(get_rule("titans")),
    # titans with one change
    "titans-chunk8": Variant(get_rule("titans"), chunk_size=8),
    "titans-nomom": Variant(_titans(name="titans-nomom", momentum=False)),
    "titans-maxlr0.1": Variant(get_rule("titans"), layer={"max_lr": 0.1}),
    "titans-maxlr0.01": Variant(get_rule("titans"), layer={"max_lr": 0.01}),
    "mlp-zero": Variant(_titans(name="mlp", architecture=MemoryArchitecture(**_MLP)), zero_last=True),
    "mlp+res-zero": Variant(_titans(name="mlp+res", architecture=MemoryArchitecture(**_MLP, residual=True)),
                            zero_last=True),
    "mlp-zero-maxlr0.1": Variant(_titans(name="mlp", architecture=MemoryArchitecture(**_MLP)), zero_last=True,
                                 layer={"max_lr": 0.1}),
    "titans-mom-4": Variant(get_rule("titans"), gate_bias={"momentum": -4.0}),
    "titans-mom-4-forget-8": Variant(get_rule("titans"), gate_bias={"momentum": -4.0, "forget": -8.0}),
    "linear-chunked+mom+forget-low": Variant(VARIANTS_LINEAR_MF, gate_bias={"momentum": -4.0, "forget": -8.0}),
    "titans-maxlr0.1-mom-4-forget-8": Variant(get_rule("titans"), layer={"max_lr": 0.1},
                                              gate_bias={"momentum": -4.0, "forget": -8.0}),
    "mlp-zero-maxlr0.1-mom-4-forget-8": Variant(_titans(name="mlp", architecture=MemoryArchitecture(**_MLP)),
                                                zero_last=True, layer={"max_lr": 0.1},
                                                gate_bias={"momentum": -4.0, "forget": -8.0}),
    "titans-mom-4-forget-8-chunk8": Variant(get_rule("titans"), chunk_size=8,
                                            gate_bias={"momentum": -4.0, "forget": -8.0}),
    "mlp+res-chunk8": Variant(_titans(name="mlp+res", architecture=MemoryArchitecture(**_MLP, residual=True)),
                              chunk_size=8),
}


def build(variant: Variant, recipe: MQARRecipe, args: argparse.Namespace, arch: str = "lmm") -> torch.nn.Module:
    model = build_model(f"{arch}-tiny", vocab_size=recipe.vocab_size, dim=args.dim, depth=args.depth,
                        heads=args.heads, window=args.window, chunk_size=variant.chunk_size or args.chunk_size,
                        memory_rule=variant.rule)
    for layer in model.modules():
        if isinstance(layer, NeuralMemory):
            for name, value in variant.layer.items():
                setattr(layer, name, value)
            names = ["lr"] + ["momentum"] * layer.rule.momentum + ["forget"] * layer.rule.forgetting
            with torch.no_grad():
                for name, logit in {**FORMER_GATE_BIAS, **variant.gate_bias}.items():
                    if name not in names:
                        continue
                    bias = layer.to_gates.bias.view(layer.heads, layer.n_gates)
                    bias[:, names.index(name)] = logit
            if variant.zero_last:
                with torch.no_grad():
                    layer.initial_weights[-1].zero_()
    return model


def write(args: argparse.Namespace, rows: list[dict]) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


def main() -> None:
    defaults = MQARRecipe()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="delta,titans")
    p.add_argument("--arch", default="lmm", help="model shell (lmm or mac)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len)
    p.add_argument("--pairs", type=int, default=defaults.num_kv_pairs)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--log-every", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        for seed in (int(s) for s in args.seeds.split(",")):
            recipe = MQARRecipe(seq_len=args.seq_len, num_kv_pairs=args.pairs, steps=args.steps, lr=args.lr,
                                seed=seed)
            torch.manual_seed(seed)
            model = build(variant, recipe, args, args.arch)
            start = time.perf_counter()
            try:
                losses = train_mqar(model, recipe, args.log_every)
            except ValueError as error:  # the engine refuses non-finite inputs: the inner loop diverged
                print(f"{args.arch} {name:28s} seed {seed}  diverged: {error}", flush=True)
                rows.append({"variant": name, "arch": args.arch, "seed": seed, "diverged": str(error),
                             "beyond": 0.0, "near": 0.0, "train_seconds": time.perf_counter() - start})
                write(args, rows)
                continue
            seconds = time.perf_counter() - start
            scores = mqar_accuracy_by_distance(model, recipe, args.depth * args.window)
            row = {"variant": name, "arch": args.arch, "seed": seed, **scores, "parameters": count_parameters(model),
                   "train_seconds": seconds, "final_loss": float(np.mean(losses[-20:])),
                   "loss_curve": [float(np.mean(losses[i:i + 25])) for i in range(0, len(losses), 25)]}
            rows.append(row)
            print(f"{args.arch} {name:28s} seed {seed}  beyond {row['beyond']:.3f}  near {row['near']:.3f}  "
                  f"loss {row['final_loss']:.3f}  {seconds:5.0f}s", flush=True)
            write(args, rows)


if __name__ == "__main__":
    main()
