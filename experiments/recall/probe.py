"""One MQAR run of one architecture and memory rule: the screening tool behind the main job's recall recipe.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/recall/probe.py --arch lmm --rule titans_linear --seed 0 \
        --out experiments/recall/results/probe_lmm_titans_linear_s0.json

Trains ``{arch}-tiny`` narrowed to dim / depth / heads / window / chunk (``compare_recall_past_window``'s shape) on
MQAR with ``ttmem.eval.mqar.train_mqar`` and scores held-out queries near and beyond the window stack's reach at
1x and 2x the training length. Writes one JSON record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from ttmem.eval.mqar import MQARRecipe, mqar_accuracy_by_distance, train_mqar
from ttmem.models import build_model, count_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--rule", default=None, help="memory rule (default: the architecture's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--segment", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = MQARRecipe(seq_len=args.seq_len, num_kv_pairs=args.pairs, vocab_size=args.vocab, steps=args.steps,
                        batch_size=args.batch, lr=args.lr, seed=args.seed)
    torch.manual_seed(args.seed)
    extra = {"memory_rule": args.rule} if args.rule else {}
    model = build_model(f"{args.arch}-tiny", vocab_size=args.vocab, dim=args.dim, depth=args.depth,
                        heads=args.heads, window=args.window, chunk_size=args.chunk, segment_len=args.segment,
                        **extra)
    start = time.perf_counter()
    losses = train_mqar(model, recipe, log_every=50)
    seconds = time.perf_counter() - start
    reach = args.depth * args.window
    scores = {f"{m}x": mqar_accuracy_by_distance(model, dataclasses.replace(recipe, seq_len=m * args.seq_len), reach)
              for m in (1, 2)}
    record = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "parameters": count_parameters(model), "train_seconds": seconds,
              "final_loss": sum(losses[-20:]) / 20, "losses": losses[::10], "scores": scores}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps({"arch": args.arch, "rule": args.rule, "seed": args.seed, "params": record["parameters"],
                      "s": round(seconds), "beyond_1x": scores["1x"]["beyond"], "near_1x": scores["1x"]["near"],
                      "beyond_2x": scores["2x"]["beyond"]}))


if __name__ == "__main__":
    main()
