"""Benchmark: Nested Learning optimizers through the trainer, and EWC against forgetting.

Everything runs through `ttmem.train.Trainer`, the code path of ``ttmem train optimizer=NAME lr=X ...``:
optimizers are built by name by `ttmem.train.optim.build_optimizer`, the schedule is the trainer's
warm-up + cosine, gradients are clipped by the trainer, and validation bits per byte is the trainer's
own validation (the first ``eval_tokens`` tokens of the corpus's validation split). The model is a
trainer preset (default ``mac-tiny``, Titans MAC, about 2.5M parameters) and the corpus is the
trainer's default ``stdlib`` (the Python standard library's ``.py`` sources, split by a hash of each
file's path). No synthetic task is mixed in (``aux_task=``): this is a language-modelling comparison.

1. **Optimizer sweep.** Every optimizer trains the same model from the same initial weights on the
   same batches for the same number of steps with the same schedule, at each learning rate of its
   grid. The learning rate with the best validation bits per byte is kept; its bpb and wall time are
   reported. Each run's equivalent ``ttmem train`` command is stored in the JSON.
2. **Continual learning.** Phase A is the sweep's best run of ``--continual-optimizer`` on corpus A
   (stdlib ``.py``). Phase B trains that model on corpus B (the stdlib's other text files: ``.txt``,
   ``.decTest``, ``.xml``, ...) with the same optimizer and learning rate, once per EWC strength λ
   (λ = 0 is plain fine-tuning). The EWC penalty (diagonal Fisher of corpus A's loss at the end of
   phase A) enters through the trainer's ``penalty`` hook. Forgetting = corpus A's validation bpb
   after phase B minus before it.

The defaults are the trainer's full-size settings (batch 16 x 128, 300 steps); smaller runs are set on
the command line. Writes JSON to ``--out`` and prints the tables; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ttmem.data import Corpus, CorpusWindows, get_tokenizer, load_corpus
from ttmem.data.batches import make_batch
from ttmem.data.corpora import list_text_files, split_files, stdlib_root
from ttmem.eval.metrics import lm_nll_sums, logits_of, summarize_nll, token_nll_sum
from ttmem.optim import EWC, estimate_fisher
from ttmem.train import Trainer, TrainingDiverged, resolve_config
from ttmem.train.config import TrainConfig

# Corpus B: the standard library's text files that are not Python sources.
OTHER_TEXT_SUFFIXES = (
    ".txt", ".rst", ".decTest", ".xml", ".html", ".toml", ".json", ".c", ".h", ".def", ".cfg", ".ini",
    ".csv", ".pem", ".bat", ".ps1", ".sh", ".md", ".css", ".js", ".tcl", ".xsl", ".dtd", ".in", ".py-tpl",
)
# Learning-rate grids per trainer optimizer name (override with --grid NAME=LR,LR,...).
DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {
    "adamw": (1e-3, 3e-3, 1e-2),
    "m3": (1e-2, 3e-2, 1e-1),
    "deepmomentumgd": (0.1, 0.3, 1.0),
}
DISPLAY = {"adamw": "AdamW", "m3": "M3", "deepmomentumgd": "DeepMomentumGD", "momentumgd": "MomentumGD"}


# -- configuration ---------------------------------------------------------------------------------
def shared_overrides(args: argparse.Namespace, steps: int) -> list[str]:
    """`ttmem train` settings common to every run of this benchmark."""
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, steps // 10)
    return [
        f"model={args.model}",
        f"data={args.data}",
        "aux_task=",
        "baseline=none",
        "report=false",
        f"batch_size={args.batch_size}",
        f"seq_len={args.seq_len}",
        f"steps={steps}",
        f"warmup_steps={min(warmup, steps)}",
        f"weight_decay={args.weight_decay:g}",
        f"eval_tokens={args.eval_tokens}",
        f"eval_every={steps}",
        f"ckpt_every={steps}",
        f"log_every={max(1, steps // 10)}",
        "keep_checkpoints=1",
        f"seed={args.seed}",
        f"device={args.device}",
    ]


def run_config(overrides: list[str], out_dir: Path) -> tuple[TrainConfig, str]:
    """The trainer config and the equivalent command line."""
    items = [*overrides, f"out_dir={out_dir}"]
    return resolve_config(None, items), "ttmem train " + " ".join(items)


def fresh(out_dir: Path) -> Path:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    return out_dir


# -- corpora and measurement -----------------------------------------------------------------------
def other_text_corpus(tokenizer: str, val_fraction: float) -> Corpus:
    """Corpus B: the stdlib's non-Python text files, split by path hash like the `stdlib` corpus."""
    root = stdlib_root()
    train, val = split_files(root, list_text_files(root, OTHER_TEXT_SUFFIXES), val_fraction)
    tok = get_tokenizer(tokenizer)
    return Corpus("stdlib-other-text", tok.name, tok.vocab_size, tok.encode(train), tok.encode(val), len(val))


def validation_bpb(model: nn.Module, corpus: Corpus, config: TrainConfig) -> float:
    """The trainer's validation measure (`Trainer.validate`, one process) on any corpus."""
    nll, count = lm_nll_sums(model, corpus.validation, config.seq_len, 8, config.eval_tokens)
    return summarize_nll(nll, count, corpus.bytes_per_token)["bpb"]


def train(
    config: TrainConfig,
    corpus: Corpus,
    model: nn.Module | None = None,
    penalty: Any = None,
) -> dict[str, Any]:
    """One trainer run; wall time of `fit`, training-only time, final validation, the model."""
    records: list[dict] = []
    trainer = Trainer(config, model=model, corpus=corpus, on_step=lambda _t, r: records.append(dict(r)),
                      penalty=penalty)
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except (TrainingDiverged, ValueError) as err:
        # Weights blown up by a step show up either as a non-finite loss (the trainer's check) or as
        # the memory layers refusing non-finite inputs during the next forward pass.
        if isinstance(err, ValueError) and "NaN or infinite" not in str(err):
            raise
        return {"diverged": True, "error": str(err), "wall_seconds": time.perf_counter() - start,
                "val_bpb": None, "train_seconds": None, "model": None}
    wall = time.perf_counter() - start
    tokens = config.steps * config.batch_size * config.seq_len
    # tokens_per_s of the last step is measured before its validation pass: training time only.
    train_seconds = tokens / records[-1]["tokens_per_s"]
    return {"diverged": False, "val_bpb": result.validation["bpb"], "last_loss": result.last_loss,
            "train_seconds": train_seconds, "wall_seconds": wall, "model": result.model}


# -- experiments -----------------------------------------------------------------------------------
def optimizer_sweep(args: argparse.Namespace, corpus: Corpus, grids: dict[str, tuple[float, ...]]) -> dict:
    """Every (optimizer, lr) run, the best lr per optimizer, and the best run's model per optimizer."""
    runs, models = [], {}
    for name, grid in grids.items():
        for lr in grid:
            out_dir = fresh(Path(args.runs_dir) / f"{name}-lr{lr:g}")
            config, command = run_config([*shared_overrides(args, args.steps), f"optimizer={name}",
                                          f"lr={lr:g}"], out_dir)
            run = train(config, corpus)
            model = run.pop("model")
            if model is not None:
                models[(name, lr)] = model
            runs.append({"optimizer": name, "lr": lr, **run, "command": command})
            bpb = "diverged" if run["diverged"] else f"{run['val_bpb']:.4f}"
            print(f"  {name:15s} lr={lr:<7g} val bpb={bpb}  train {run['train_seconds'] or 0:.0f}s "
                  f"(wall {run['wall_seconds']:.0f}s)", flush=True)
    best = []
    for name, grid in grids.items():
        done = [r for r in runs if r["optimizer"] == name and not r["diverged"]]
        if not done:
            best.append({"optimizer": name, "grid": list(grid), "lr": None})
            continue
        winner = min(done, key=lambda r: r["val_bpb"])
        edge = "low" if winner["lr"] == min(grid) else "high" if winner["lr"] == max(grid) else None
        best.append({"optimizer": name, "grid": list(grid), "lr": winner["lr"], "val_bpb": winner["val_bpb"],
                     "train_seconds": winner["train_seconds"], "wall_seconds": winner["wall_seconds"],
                     "best_at_grid_edge": edge})
    kept = {r["optimizer"]: models[(r["optimizer"], r["lr"])] for r in best if r["lr"] is not None}
    return {"runs": runs, "best": best, "models": kept}


def fisher_batches(corpus: Corpus, config: TrainConfig, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` training batches of corpus A (a stream the training runs do not use)."""
    source = CorpusWindows(corpus.train, config.seq_len, config.seed, stream=7)
    batches = [make_batch(source, step, range(config.batch_size)) for step in range(count)]
    return [(b.input_ids, b.targets) for b in batches]


def mean_nll(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    return token_nll_sum(logits_of(model(inputs)), targets) / targets.numel()


def continual(
    args: argparse.Namespace, corpus_a: Corpus, corpus_b: Corpus, lr: float, model_a: nn.Module
) -> dict[str, Any]:
    """Phase B on corpus B from the phase-A model, once per EWC λ."""
    config_probe, _ = run_config(shared_overrides(args, args.continual_steps), Path(args.runs_dir))
    a_before = validation_bpb(model_a, corpus_a, config_probe)
    b_before = validation_bpb(model_a, corpus_b, config_probe)
    start = time.perf_counter()
    fisher = estimate_fisher(model_a, fisher_batches(corpus_a, config_probe, args.fisher_batches), mean_nll,
                             mode="per_batch")
    fisher_seconds = time.perf_counter() - start
    anchor = {name: p.detach().clone() for name, p in model_a.named_parameters() if name in fisher}
    rows = []
    for lam in (0.0, *args.ewc_lambdas):
        out_dir = fresh(Path(args.runs_dir) / f"continual-{args.continual_optimizer}-ewc{lam:g}")
        config, command = run_config([*shared_overrides(args, args.continual_steps),
                                      f"optimizer={args.continual_optimizer}", f"lr={lr:g}"], out_dir)
        penalty = None
        if lam > 0:
            ewc = EWC(lam)
            ewc.load_state_dict({"lam": lam, "fisher_decay": None, "tasks": [{"fisher": fisher, "anchor": anchor}]})
            penalty = ewc.penalty
        run = train(config, corpus_b, model=copy.deepcopy(model_a), penalty=penalty)
        model = run.pop("model")
        a_after = validation_bpb(model, corpus_a, config) if model is not None else float("nan")
        b_after = run["val_bpb"] if model is not None else float("nan")
        rows.append({"ewc_lambda": lam, "a_val_bpb_before": a_before, "a_val_bpb_after": a_after,
                     "forgetting_bpb": a_after - a_before, "b_val_bpb_before": b_before,
                     "b_val_bpb_after": b_after, "phase_b_train_seconds": run["train_seconds"],
                     "phase_b_wall_seconds": run["wall_seconds"], "diverged": run["diverged"],
                     "phase_b": "corpus B, starting from the phase-A model, trainer settings: "
                                + command.removeprefix("ttmem train ").replace(f"data={args.data} ", "")})
        print(f"  EWC lambda={lam:<8g} forgetting={a_after - a_before:+.4f} bpb  B val={b_after:.4f}  "
              f"train {run['train_seconds'] or 0:.0f}s", flush=True)
    return {"optimizer": args.continual_optimizer, "lr": lr, "fisher_batches": args.fisher_batches,
            "fisher_seconds": fisher_seconds, "rows": rows}


# -- output ----------------------------------------------------------------------------------------
def print_tables(result: dict) -> None:
    cfg = result["config"]
    print(f"\nOptimizers through the trainer: {cfg['model']} on {cfg['data']}, {cfg['steps']} steps, "
          f"batch {cfg['batch_size']} x {cfg['seq_len']}")
    print("| optimizer | lr grid | tuned lr | val bpb | train s | wall s |\n|---|---|---|---|---|---|")
    for row in result["best"]:
        name = DISPLAY.get(row["optimizer"], row["optimizer"])
        grid = ", ".join(f"{lr:g}" for lr in row["grid"])
        if row["lr"] is None:
            print(f"| {name} | {grid} | diverged at every lr | | | |")
            continue
        edge = f" ({row['best_at_grid_edge']} end)" if row["best_at_grid_edge"] else ""
        print(f"| {name} | {grid} | {row['lr']:g}{edge} | {row['val_bpb']:.4f} | {row['train_seconds']:.0f} "
              f"| {row['wall_seconds']:.0f} |")
    print("\nAll runs:\n| optimizer | lr | val bpb | train s |\n|---|---|---|---|")
    for run in result["runs"]:
        bpb = "diverged" if run["diverged"] else f"{run['val_bpb']:.4f}"
        secs = f"{run['train_seconds']:.0f}" if run["train_seconds"] else ""
        print(f"| {DISPLAY.get(run['optimizer'], run['optimizer'])} | {run['lr']:g} | {bpb} | {secs} |")
    cont = result.get("continual")
    if cont:
        name = DISPLAY.get(cont["optimizer"], cont["optimizer"])
        print(f"\nContinual learning ({name}, lr {cont['lr']:g}): A = stdlib .py ({cfg['steps']} steps), "
              f"then B = other stdlib text ({cfg['continual_steps']} steps)")
        print("| EWC λ | A bpb after A | A bpb after B | forgetting | B bpb before B | B bpb after B |")
        print("|---|---|---|---|---|---|")
        for row in cont["rows"]:
            print(f"| {row['ewc_lambda']:g} | {row['a_val_bpb_before']:.4f} | {row['a_val_bpb_after']:.4f} "
                  f"| {row['forgetting_bpb']:+.4f} | {row['b_val_bpb_before']:.4f} | {row['b_val_bpb_after']:.4f} |")


def parse_grid(items: list[str]) -> dict[str, tuple[float, ...]]:
    grids: dict[str, tuple[float, ...]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise argparse.ArgumentTypeError(f"--grid expects NAME=LR,LR,... got {item!r}")
        lrs = tuple(float(v) for v in values.split(","))
        if any(lr <= 0 for lr in lrs):
            raise argparse.ArgumentTypeError(f"learning rates must be > 0 in {item!r}")
        grids[name.strip().lower()] = lrs
    return grids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/optimizers.json")
    parser.add_argument("--runs-dir", default="benchmarks/results/optimizer-runs",
                        help="trainer out_dir of each run (replaced if present)")
    parser.add_argument("--model", default="mac-tiny", help="trainer model preset")
    parser.add_argument("--data", default="stdlib", help="corpus A (trainer data spec)")
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_GRIDS),
                        help="trainer optimizer names (any `ttmem train optimizer=` value)")
    parser.add_argument("--grid", nargs="*", default=[], metavar="NAME=LR,LR",
                        help="learning-rate grid for an optimizer, replacing its default")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="decoupled decay scales with lr, so one value is unfair to SGD-scale lrs")
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--continual-optimizer", default="adamw")
    parser.add_argument("--continual-steps", type=int, default=150)
    parser.add_argument("--fisher-batches", type=int, default=16)
    parser.add_argument("--ewc-lambdas", type=float, nargs="*", default=[1e3, 1e4, 1e5, 1e6])
    parser.add_argument("--skip-continual", action="store_true")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "eval_tokens", "threads", "continual_steps", "fisher_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(lam < 0 for lam in args.ewc_lambdas):
        parser.error("--ewc-lambdas must be >= 0")
    try:
        custom = parse_grid(args.grid)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    names = [n.lower() for n in args.optimizers]
    if not args.skip_continual and args.continual_optimizer.lower() not in names:
        parser.error("--continual-optimizer must be one of --optimizers (phase A reuses its sweep run)")
    missing = [n for n in names if n not in custom and n not in DEFAULT_GRIDS]
    if missing:
        parser.error(f"no default lr grid for {', '.join(missing)}; give one with --grid NAME=LR,LR")
    args.grids = {n: custom.get(n, DEFAULT_GRIDS.get(n, ())) for n in names}
    args.continual_optimizer = args.continual_optimizer.lower()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base, _ = run_config(shared_overrides(args, args.steps), Path(args.runs_dir))
    corpus_a = load_corpus(base.data, base.tokenizer, val_fraction=base.val_fraction, max_bytes=base.max_bytes or None)
    print(f"corpus A ({base.data}): {len(corpus_a.train)} train / {len(corpus_a.validation)} validation tokens",
          flush=True)
    sweep = optimizer_sweep(args, corpus_a, args.grids)
    result: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "grids"},
        "grids": {k: list(v) for k, v in args.grids.items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "numpy": np.__version__},
        "runs": sweep["runs"],
        "best": sweep["best"],
    }
    if not args.skip_continual:
        best = next(r for r in sweep["best"] if r["optimizer"] == args.continual_optimizer)
        if best["lr"] is None:
            print(f"{args.continual_optimizer} diverged at every lr: no continual-learning run")
        else:
            corpus_b = other_text_corpus(base.tokenizer, base.val_fraction)
            print(f"corpus B (other stdlib text): {len(corpus_b.train)} train / {len(corpus_b.validation)} "
                  "validation tokens", flush=True)
            model_a = sweep["models"][args.continual_optimizer]
            result["continual"] = continual(args, corpus_a, corpus_b, best["lr"], model_a)
    result["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_tables(result)
    print(f"\ntotal {result['total_seconds']:.0f}s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
