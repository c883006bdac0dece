"""MQAR recall past a sliding window: a memory model against a same-size sliding-window Transformer.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/mqar_recall.py --threads 1

Every architecture is its ``-tiny`` preset narrowed to ``--dim``/``--depth``/``--heads`` with the task's
vocabulary, trained from the same torch seed on the same MQAR batches (Zoology's rules, sequence length
``--seq-len``, ``--pairs`` key-value pairs; loss on the answers only; AdamW, warm-up then cosine). Held-out
queries are split by how far back their key sits: "near" is within the sliding-window stack's reach
``depth * window``, "beyond" is past it. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from ttmem.eval.mqar import MQARRecipe, chance_accuracy, compare_recall_past_window


def main() -> None:
    defaults = MQARRecipe()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="deltanet,swa_transformer", help="comma-separated architectures")
    p.add_argument("--seq-len", type=int, default=defaults.seq_len)
    p.add_argument("--pairs", type=int, default=defaults.num_kv_pairs)
    p.add_argument("--vocab", type=int, default=defaults.vocab_size)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--eval-examples", type=int, default=defaults.eval_examples)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--out", default="benchmarks/results/mqar_recall.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = MQARRecipe(
        seq_len=args.seq_len,
        num_kv_pairs=args.pairs,
        vocab_size=args.vocab,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        eval_examples=args.eval_examples,
        seed=args.seed,
    )
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    start = time.perf_counter()
    results = compare_recall_past_window(
        archs, recipe, args.dim, args.depth, args.heads, args.window, args.chunk_size, args.log_every
    )
    reach = args.depth * args.window
    print(f"\nMQAR, length {recipe.seq_len}, {recipe.num_kv_pairs} pairs, vocabulary {recipe.vocab_size}, "
          f"chance {chance_accuracy(recipe):.3f}; reach of the window stack = {args.depth} x {args.window} = {reach}")
    print(f"| model | params | near (key <= {reach} back) | beyond (key > {reach} back) | train s | final loss |")
    print("|---|---|---|---|---|---|")
    for arch, r in results.items():
        print(f"| {arch} | {r['parameters']:,} | {r['near']:.3f} (n={r['near_n']}) | {r['beyond']:.3f} "
              f"(n={r['beyond_n']}) | {r['train_seconds']:.0f} | {r['final_loss']:.3f} |")
    report = {
        "recipe": recipe.to_dict(),
        "model": {"dim": args.dim, "depth": args.depth, "heads": args.heads, "window": args.window,
                  "chunk_size": args.chunk_size},
        "chance": chance_accuracy(recipe),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "wall_seconds": time.perf_counter() - start,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
