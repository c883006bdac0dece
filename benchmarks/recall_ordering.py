"""The papers' recall ordering at small scale: every architecture, equal parameters, equal budget, 3 seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/recall_ordering.py --threads 1 --jobs 2

``--jobs N`` trains N runs at once, each in its own process on ``--threads`` threads (on a 2-core machine, two
single-threaded runs are much faster than one run on two threads); the results do not depend on N. ``--set
ARCH.FIELD=VALUE`` changes one architecture's ModelConfig (e.g. ``mac.mac_output=gate``); the parameter matching
accounts for it.

Every architecture is its ``-tiny`` preset narrowed to one shape (``--dim``, ``--depth``, ``--heads``, window,
chunk and segment sizes) with its SwiGLU width solved so that every model has the parameter count of the
Transformer at ``--mlp-ratio`` (to within one step of 8 hidden units). Each model is trained from each seed on
two tasks with the same optimiser, schedule and step count (``ttmem.eval.mqar.train_mqar``: AdamW, warm-up then
cosine, loss on the answers only):

- MQAR (Zoology's rules) at ``--seq-len``; scored on held-out examples at 1x and 2x that length, on the
  queries whose key is further back than the sliding-window stack's reach ``depth * window`` (those no window
  model can see; chance 1 / (vocab / 2)).
- Key needle (``ttmem.data.key_needle_example``: one key-value pair in a haystack of keys, the key again at the
  end), trained at ``--seq-len`` with the needle at a uniformly random depth, scored at 1x and 2x that length on
  ``--eval-examples`` needles at evenly spaced depths.

Prints one table (mean over seeds and the min–max spread) and writes every run to JSON (``--out``), rewritten
after each run so an interrupted sweep keeps what finished. The summary says which of the papers' claims hold in
the table: the Titans memories (lmm, mac) at least DeltaNet minus 0.05 past the window, and DeltaNet far above
the sliding-window Transformer there (read as at least 0.2 above).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ttmem.data import key_needle_example, row_rng
from ttmem.eval.mqar import MQARRecipe, chance_accuracy, mqar_accuracy_by_distance, train_mqar
from ttmem.eval.recall import answer_accuracy
from ttmem.models import build_model, count_parameters
from ttmem.models.config import ARCHITECTURES
from ttmem.train.config import parse_overrides

NEEDLE_TRAIN_STREAM, NEEDLE_EVAL_STREAM = 31, 32
MQAR_COLUMNS = ("mqar_beyond_1x", "mqar_beyond_2x")
NEEDLE_COLUMNS = ("needle_1x", "needle_2x")
# Seconds per training step at the default recipe relative to the Transformer (one thread): --jobs starts the
# slowest runs first so that parallel processes finish together.
SLOW = {"lmm": 2.8, "mac": 3.0, "mag": 2.4, "mal": 2.3, "hope": 2.7, "deltanet": 1.5, "gated_deltanet": 1.5,
        "linear_attention": 1.3}


def shape_overrides(args: argparse.Namespace) -> dict:
    """The fields every model of the comparison shares."""
    return dict(vocab_size=args.vocab, dim=args.dim, depth=args.depth, heads=args.heads, window=args.window,
                chunk_size=args.chunk_size, segment_len=args.segment_len)


def matched_ratio(arch: str, target: int, shape: dict) -> float:
    """The SwiGLU ratio that gives ``arch`` at ``shape`` the parameter count nearest ``target``. Counts are affine
    in the hidden width (a multiple of 8), so two probes give the slope."""
    dim = shape["dim"]

    def count(hidden: int) -> int:
        return count_parameters(build_model(f"{arch}-tiny", mlp_ratio=hidden / dim, **shape))

    low, high = count(8), count(16)
    steps = round((target - low) / (high - low))
    if steps < 0:
        raise ValueError(f"{arch} has {low:,} parameters with the narrowest MLP, more than the target {target:,}; "
                         "raise --mlp-ratio")
    return (8 + 8 * steps) / dim


def needle_batch(args: argparse.Namespace, seed: int, stream: int, step: int, rows: int, seq_len: int,
                 depths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Key-needle examples seeded by (seed, stream, step, row); random depths unless given."""
    examples = []
    for i in range(rows):
        rng = row_rng(seed, stream, step, i)
        depth = float(rng.random()) if depths is None else float(depths[i])
        examples.append(key_needle_example(rng, seq_len, args.vocab, depth))
    return np.stack([e[0] for e in examples]), np.stack([e[1] for e in examples])


def run_mqar(model: nn.Module, recipe: MQARRecipe, reach: int) -> dict[str, float]:
    losses = train_mqar(model, recipe)
    scores = {"final_loss": float(np.mean(losses[-20:]))}
    for factor, name in zip((1, 2), MQAR_COLUMNS):
        longer = MQARRecipe(**{**recipe.to_dict(), "seq_len": factor * recipe.seq_len})
        result = mqar_accuracy_by_distance(model, longer, reach)
        scores[name] = result["beyond"]
        scores[name.replace("beyond", "near")] = result["near"]
    return scores


def run_needle(model: nn.Module, recipe: MQARRecipe, args: argparse.Namespace) -> dict[str, float]:
    losses = train_mqar(model, recipe, batches=lambda step: needle_batch(
        args, recipe.seed, NEEDLE_TRAIN_STREAM, step, recipe.batch_size, recipe.seq_len))
    scores = {"final_loss": float(np.mean(losses[-20:]))}
    depths = (np.arange(args.eval_examples) + 0.5) / args.eval_examples
    for factor, name in zip((1, 2), NEEDLE_COLUMNS):
        inputs, targets = needle_batch(args, recipe.seed, NEEDLE_EVAL_STREAM, factor, args.eval_examples,
                                       factor * recipe.seq_len, depths)
        scores[name] = answer_accuracy(model, inputs, targets)[1]
    return scores


def spread(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.3f} ({min(values):.2f}–{max(values):.2f})"


def summarise(runs: list[dict], archs: list[str]) -> tuple[list[str], dict[str, dict[str, list[float]]]]:
    """Markdown table rows and per-arch column values."""
    table = {}
    lines = ["| model | params | MQAR past window, 1x | MQAR past window, 2x | needle 1x | needle 2x | train s |",
             "|---|---|---|---|---|---|---|"]
    for arch in archs:
        mine = [r for r in runs if r["arch"] == arch]
        if not mine:
            continue
        cols = {c: [r[c] for r in mine if c in r] for c in MQAR_COLUMNS + NEEDLE_COLUMNS}
        table[arch] = cols
        seconds = sum(r["train_seconds"] for r in mine)
        lines.append(f"| {arch} | {mine[0]['parameters']:,} | " + " | ".join(spread(cols[c]) for c in cols)
                     + f" | {seconds:.0f} |")
    return lines, table


def claims(table: dict[str, dict[str, list[float]]]) -> list[str]:
    """The papers' ordering past the window (MQAR at the training length), as measured."""
    out = []
    mean = {a: float(np.mean(c["mqar_beyond_1x"])) for a, c in table.items() if c["mqar_beyond_1x"]}
    if "deltanet" in mean:
        for arch in ("lmm", "mac"):
            if arch in mean:
                holds = mean[arch] >= mean["deltanet"] - 0.05
                out.append(f"{arch} >= deltanet - 0.05 past the window: {'holds' if holds else 'does not hold'} "
                           f"({mean[arch]:.3f} vs {mean['deltanet']:.3f})")
        if "swa_transformer" in mean:  # ">>" read as at least 0.2 above
            holds = mean["deltanet"] >= mean["swa_transformer"] + 0.2
            verdict = "holds" if holds else "does not hold"
            out.append(f"deltanet >> swa_transformer (by >= 0.2) past the window: {verdict} "
                       f"({mean['deltanet']:.3f} vs {mean['swa_transformer']:.3f})")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=",".join(ARCHITECTURES), help="comma-separated architectures")
    p.add_argument("--tasks", default="mqar,needle", help="mqar, needle or both")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--eval-examples", type=int, default=128)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=32)
    p.add_argument("--segment-len", type=int, default=32)
    p.add_argument("--mlp-ratio", type=float, default=5.0, help="the Transformer's; sets the parameter target")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0: leave torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    p.add_argument("--set", action="append", default=[], metavar="ARCH.FIELD=VALUE",
                   help="a ModelConfig field for one architecture, e.g. mac.mac_output=gate (repeatable)")
    p.add_argument("--out", default="benchmarks/results/recall_ordering.json")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="train nothing: combine the runs of earlier outputs (same recipe) into one table and --out")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = sorted(set(args.archs) - set(ARCHITECTURES))
    if unknown:
        p.error(f"unknown architecture(s) {', '.join(unknown)}; known: {', '.join(ARCHITECTURES)}")
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not args.tasks or set(args.tasks) - {"mqar", "needle"}:
        p.error(f"--tasks must name mqar and/or needle, got {','.join(args.tasks)!r}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.jobs < 1:
        p.error(f"--jobs must be a positive integer, got {args.jobs}")
    args.model_args = {}
    try:
        settings = parse_overrides(args.set)
    except ValueError as error:
        p.error(f"--set: {error}")
    for target, value in settings.items():
        arch, _, field = target.partition(".")
        if not field or arch not in ARCHITECTURES:
            p.error(f"--set expects ARCH.FIELD=VALUE with a known ARCH, got {target!r}")
        args.model_args.setdefault(arch, {})[field] = value
    return args


RECIPE_FIELDS = ("seq_len", "pairs", "vocab", "steps", "batch", "lr", "warmup", "eval_examples", "dim", "depth",
                 "heads", "window", "chunk_size", "segment_len", "mlp_ratio")


def merge(paths: list[str], out: Path) -> dict:
    """One report from several outputs of the same recipe (e.g. architectures trained in parallel processes)."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    first = reports[0]
    for path, report in zip(paths, reports):
        differs = [f for f in RECIPE_FIELDS if report["args"][f] != first["args"][f]]
        if differs:
            raise SystemExit(f"recall_ordering: {path} has a different recipe ({', '.join(differs)})")
    runs = [run for report in reports for run in report["runs"]]
    archs = [a for a in ARCHITECTURES if any(r["arch"] == a for r in runs)]
    lines, table = summarise(runs, archs)
    merged = {**first, "merged_from": paths, "runs": runs, "claims": claims(table),
              "wall_seconds": sum(r.get("wall_seconds", 0.0) for r in reports)}
    print("\n".join(lines))
    for line in merged["claims"]:
        print(line)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {out}")
    return merged


def train_one(arch: str, task: str, seed: int, args: argparse.Namespace, ratio: float, reach: int) -> dict:
    """One model trained from ``seed`` on one task and scored; the run's record."""
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = MQARRecipe(seq_len=args.seq_len, num_kv_pairs=args.pairs, vocab_size=args.vocab, steps=args.steps,
                        batch_size=args.batch, lr=args.lr, warmup=args.warmup, eval_examples=args.eval_examples,
                        seed=seed)
    torch.manual_seed(seed)
    model = build_model(f"{arch}-tiny", mlp_ratio=ratio, **{**shape_overrides(args), **args.model_args.get(arch, {})})
    began = time.perf_counter()
    scores = run_mqar(model, recipe, reach) if task == "mqar" else run_needle(model, recipe, args)
    return {"arch": arch, "task": task, "seed": seed, "parameters": count_parameters(model),
            "train_seconds": time.perf_counter() - began, **scores}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = shape_overrides(args)
    target = count_parameters(build_model("transformer-tiny", mlp_ratio=args.mlp_ratio, **shape))
    try:
        ratios = {arch: matched_ratio(arch, target, {**shape, **args.model_args.get(arch, {})})
                  for arch in args.archs}
    except ValueError as error:
        raise SystemExit(f"recall_ordering: {error}") from None
    reach = args.depth * args.window
    runs: list[dict] = []
    start = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "parameter_target": target, "mlp_ratios": ratios, "reach": reach,
              "threads": args.threads or torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "runs": runs}
    jobs = [(arch, task, seed) for arch in args.archs for task in args.tasks for seed in args.seeds]

    def finished(run: dict) -> None:
        runs.append(run)
        runs.sort(key=lambda r: (args.archs.index(r["arch"]), args.tasks.index(r["task"]), r["seed"]))
        shown = {k: round(v, 3) for k, v in run.items() if k in MQAR_COLUMNS + NEEDLE_COLUMNS}
        print(f"{run['arch']:16s} {run['task']:6s} seed {run['seed']}  {shown}  {run['train_seconds']:.0f}s",
              flush=True)
        report["wall_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=2) + "\n")

    if args.jobs <= 1:
        for arch, task, seed in jobs:
            finished(train_one(arch, task, seed, args, ratios[arch], reach))
    else:  # one process per run, each on --threads threads, the slowest models first
        slowest_first = sorted(jobs, key=lambda job: SLOW.get(job[0], 0.0), reverse=True)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(train_one, arch, task, seed, args, ratios[arch], reach)
                       for arch, task, seed in slowest_first]
            for future in as_completed(futures):
                finished(future.result())
    lines, table = summarise(runs, args.archs)
    report["claims"] = claims(table)
    print(f"\nRecall at equal parameters ({target:,} target) and equal budget ({args.steps} steps of {args.batch}); "
          f"trained at length {args.seq_len}; MQAR {args.pairs} pairs, vocabulary {args.vocab}, chance "
          f"{chance_accuracy(MQARRecipe(vocab_size=args.vocab)):.3f}; past the window = key more than "
          f"{reach} tokens back; mean over seeds {args.seeds} (min–max)")
    print("\n".join(lines))
    for line in report["claims"]:
        print(line)
    report["wall_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report['wall_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
