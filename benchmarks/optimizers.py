"""Benchmark: Nested Learning optimizers against AdamW through the trainer, and EWC against forgetting.

Everything runs through `ttmem.train.Trainer`, the code path of ``ttmem train optimizer=NAME lr=X ...``:
optimizers are built by name by `ttmem.train.optim.build_optimizer` (``m3`` is the stable M3, ``m3-paper``
the literal rule, ``m3-precondition`` (the earlier default) and ``m3-precondition-shape`` / ``m3-orth-moment`` /
``m3-rms-only`` the other candidates of its ablation), the
schedule is the trainer's warm-up + cosine, gradients are clipped by the trainer, and validation bits per
byte is the trainer's own (the first ``eval_tokens`` tokens of the corpus's validation split). The corpus is
the trainer's default ``stdlib`` (the Python standard library's ``.py`` sources, split by a hash of each
file's path), with no synthetic task mixed in (``aux_task=``): this is a language-modelling comparison.

1. **Learning-rate grids** on ``--model`` (default ``transformer-tiny``). Every optimizer trains the same
   model from the same initial weights on the same batches for the same steps with the same schedule, at
   each learning rate of its grid (default 5 points spaced 3x). While the best validation bpb sits at an
   end of the grid, the grid is extended by one more 3x step past that end (at most ``--extend`` times);
   a run stopped by non-finite values counts as worse than any finished one. **Divergence** is reported
   plainly: a run diverged if it stopped on non-finite values or ended with a validation bpb above that
   of its initial weights (``initial_val_bpb``, the same per model and seed for every optimizer). Each
   grid reports the runs within 3x of its best lr and whether any of them diverged.
2. **Seeds.** Each optimizer's best learning rate is rerun with every seed of ``--seeds`` (the seed sets the
   initial weights and the batches; every optimizer sees the same ones per seed); on the ``--confirm``
   models only the ``--focus`` optimizers (default AdamW and M3) get every seed, the others the first.
3. **Confirmation** on other models (``--confirm MODEL[=OPT,OPT]``, default ``mac-tiny`` with every
   optimizer and ``hope-tiny`` with AdamW and M3, as Nested Learning pairs HOPE with M3): each optimizer at
   its best grid learning rate, every seed; the optimizers of ``--neighbours`` also at lr / 3 and lr x 3
   (first seed), which checks that the best point carries over and that nothing diverges within 3x.
4. **Continual learning** (``--continual``). Phase A is the grid's best run of ``--continual-optimizer``;
   phase B trains that model on corpus B (the stdlib's other text files: ``.txt``, ``.decTest``, ``.xml``,
   ...) with the same optimizer and learning rate, once per EWC strength λ (λ = 0 is plain fine-tuning);
   the EWC penalty (diagonal Fisher of corpus A's loss at the end of phase A) enters through the trainer's
   ``penalty`` hook. Forgetting = corpus A's validation bpb after phase B minus before it.

``NestedDeepMomentumGD``'s ``meta_step`` is not part of ``ttmem train``: this benchmark calls it from the
trainer's ``on_step`` hook every ``--meta-every`` steps, with the training loss of one batch and the
meta-loss of another, both from training-split streams the runs do not otherwise read, and a
``--meta-unroll``-step look-ahead; its cost is inside the reported time per step.

``--m3-update-rms`` sets the stable M3 variants' ``update_rms`` (``ttmem train`` passes only ``lr``; the
benchmark sets the group value after the trainer builds the optimizer, before its first step).

Reported per run: validation bpb, first and last training loss, training seconds per step (validation
excluded). Those times follow the machine's load when each run happened, so the table also gives each row's
seconds per step timed in interleaved rounds (``--time-rounds``, ``--time-steps``), where every row meets the
same load. Writes JSON to ``--out`` and prints the tables; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ttmem.data import Corpus, CorpusWindows, get_tokenizer, load_corpus
from ttmem.data.batches import make_batch
from ttmem.data.corpora import list_text_files, split_files, stdlib_root
from ttmem.optim import EWC, NestedDeepMomentumGD, estimate_fisher
from ttmem.optim.m3 import DEFAULT_VARIANT, M3
from ttmem.train import Trainer, TrainingDiverged, resolve_config
from ttmem.train.config import TrainConfig
from ttmem.train.objective import lm_nll_sums, logits_of, summarize_nll, token_nll_sum

M3_UPDATE_RMS = inspect.signature(M3).parameters["update_rms"].default

# Corpus B: the standard library's text files that are not Python sources.
OTHER_TEXT_SUFFIXES = (
    ".txt", ".rst", ".decTest", ".xml", ".html", ".toml", ".json", ".c", ".h", ".def", ".cfg", ".ini",
    ".csv", ".pem", ".bat", ".ps1", ".sh", ".md", ".css", ".js", ".tcl", ".xsl", ".dtd", ".in", ".py-tpl",
)
# Learning-rate grids per trainer optimizer name (override with --grid NAME=LR,LR,...). M3's stable
# variants match AdamW's update RMS, so they share AdamW's grid.
ADAM_SCALE = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SGD_SCALE = (0.03, 0.1, 0.3, 1.0, 3.0)
DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {
    "adamw": ADAM_SCALE,
    "m3": ADAM_SCALE,
    "m3-paper": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
    "m3-precondition": ADAM_SCALE,
    "m3-precondition-project": ADAM_SCALE,
    "m3-precondition-shape": ADAM_SCALE,
    "m3-orth-moment": ADAM_SCALE,
    "m3-rms-only": ADAM_SCALE,
    "deepmomentumgd": SGD_SCALE,
    "nesteddeepmomentumgd": SGD_SCALE,
}
DEFAULT_OPTIMIZERS = ("adamw", "m3", "m3-paper", "deepmomentumgd", "nesteddeepmomentumgd")
DISPLAY = {
    "adamw": "AdamW", "m3": "M3 (stable)", "m3-paper": "M3 (paper)", "m3-precondition": "M3 (precondition)",
    "m3-precondition-project": "M3 (precondition-project)",
    "m3-precondition-shape": "M3 (precondition-shape)",
    "m3-rms-only": "M3 (rms-only)", "m3-orth-moment": "M3 (orth-moment)", "deepmomentumgd": "DeepMomentumGD",
    "nesteddeepmomentumgd": "NestedDeepMomentumGD", "momentumgd": "MomentumGD",
}
LR_STEP = 3.0


def lr_beyond(lr: float, up: bool) -> float:
    """The next point of a 1-3-10 grid above or below ``lr`` (about 3x; 3e-3 -> 1e-2, 1e-3 -> 3e-4)."""
    for factor in (LR_STEP, 10 / LR_STEP):
        candidate = f"{lr * factor if up else lr / factor:.0e}"
        if candidate[0] in "13":
            return float(candidate)
    return lr * LR_STEP if up else lr / LR_STEP


# -- configuration ---------------------------------------------------------------------------------
def shared_overrides(args: argparse.Namespace, steps: int, model: str | None = None,
                     seed: int | None = None) -> list[str]:
    """`ttmem train` settings common to every run of this benchmark."""
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, steps // 10)
    return [
        f"model={model or args.model}",
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
        f"seed={args.seed if seed is None else seed}",
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


def mean_nll(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    return token_nll_sum(logits_of(model(inputs)), targets) / targets.numel()


def meta_step_hook(corpus: Corpus, config: TrainConfig, every: int, unroll: int) -> Any:
    """`on_step` hook: `NestedDeepMomentumGD.meta_step` every `every` steps (no-op for other optimizers)."""
    train_stream = CorpusWindows(corpus.train, config.seq_len, config.seed, stream=11)
    meta_stream = CorpusWindows(corpus.train, config.seq_len, config.seed, stream=12)
    rows = range(config.batch_size)

    def hook(trainer: Trainer, record: dict) -> None:
        if not isinstance(trainer.optimizer, NestedDeepMomentumGD) or trainer.step % every:
            return
        train_batch, meta_batch = (make_batch(s, trainer.step, rows) for s in (train_stream, meta_stream))
        trainer.optimizer.meta_step(
            trainer.module, lambda m: mean_nll(m, (train_batch.input_ids, train_batch.targets)),
            lambda m: mean_nll(m, (meta_batch.input_ids, meta_batch.targets)), unroll_steps=unroll,
        )

    return hook


def train(
    config: TrainConfig,
    corpus: Corpus,
    model: nn.Module | None = None,
    penalty: Any = None,
    hook: Any = None,
    m3_update_rms: float | None = None,
) -> dict[str, Any]:
    """One trainer run: validation bpb, first / last training loss, training time, the model."""
    records: list[dict] = []

    def on_step(trainer: Trainer, record: dict) -> None:
        records.append(dict(record))
        if hook is not None:
            hook(trainer, record)

    trainer = Trainer(config, model=model, corpus=corpus, on_step=on_step, penalty=penalty)
    if m3_update_rms is not None and isinstance(trainer.optimizer, M3):
        # `ttmem train` passes only lr; before the first step this equals M3(..., update_rms=...).
        for group in trainer.optimizer.param_groups:
            group["update_rms"] = m3_update_rms
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except (TrainingDiverged, ValueError) as err:
        # Weights blown up by a step show up either as a non-finite loss (the trainer's check) or as
        # the memory layers refusing non-finite inputs during the next forward pass.
        if isinstance(err, ValueError) and "NaN or infinite" not in str(err):
            raise
        return {"diverged": True, "error": str(err), "wall_seconds": time.perf_counter() - start,
                "val_bpb": None, "train_seconds": None, "seconds_per_step": None, "model": None,
                "first_loss": records[0]["loss"] if records else None, "steps_done": len(records)}
    wall = time.perf_counter() - start
    tokens = config.steps * config.batch_size * config.seq_len
    # tokens_per_s of the last step is measured before its validation pass: training time only
    # (meta-steps of the `on_step` hook included, they run between training steps).
    train_seconds = tokens / records[-1]["tokens_per_s"]
    return {"diverged": False, "val_bpb": result.validation["bpb"], "first_loss": records[0]["loss"],
            "last_loss": result.last_loss, "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / config.steps, "wall_seconds": wall, "model": result.model}


# -- experiments -----------------------------------------------------------------------------------
class Runner:
    """Runs (model, optimizer, lr, seed) once and caches the record; keeps the models the caller asks for.

    After every run the records so far are written to ``--out`` (``"partial": true``), so an interrupted
    benchmark keeps its finished runs; ``--reuse FILE`` takes runs with identical settings from such a file.
    """

    def __init__(self, args: argparse.Namespace, corpus: Corpus):
        self.args, self.corpus, self.runs, self.models = args, corpus, [], {}
        self.reused: dict[str, dict[str, Any]] = {}
        self.initial: dict[tuple[str, int], float] = {}
        self.load_reused()

    def initial_bpb(self, model: str, seed: int) -> float:
        """Validation bpb of the initial weights of (model, seed): the level above which a run diverged."""
        if (model, seed) not in self.initial:
            out_dir = fresh(Path(self.args.runs_dir) / f"initial-{model}-seed{seed}")
            config, _ = run_config([*shared_overrides(self.args, self.args.steps, model, seed), "optimizer=adamw"],
                                    out_dir)
            self.initial[(model, seed)] = Trainer(config, corpus=self.corpus).validate()["bpb"]
        return self.initial[(model, seed)]

    def load_reused(self) -> None:
        """(Re)read the ``--reuse`` files; another benchmark process may have added runs since."""
        for path in self.args.reuse:
            if Path(path).exists():
                for record in json.loads(Path(path).read_text())["runs"]:
                    settings = record.get("settings") or self.settings(record["command"], record["optimizer"])
                    self.reused[settings] = record

    def settings(self, command: str, name: str) -> str:
        """The run's identity: its command without the output folder, the optimizer named with its variant
        (``m3`` is ``m3-`` + M3's default variant) and M3's default ``update_rms``, plus the benchmark's
        meta-step hook."""
        canonical = f"m3-{DEFAULT_VARIANT}" if name == "m3" else name
        items = [f"optimizer={canonical}" if item == f"optimizer={name}" else item
                 for item in command.split() if not item.startswith("out_dir=")]
        if canonical.startswith("m3-") and canonical != "m3-paper":
            items.append(f"update_rms={self.args.m3_update_rms:g}")
        if name.startswith("nesteddeepmomentumgd"):
            items.append(f"meta_every={self.args.meta_every} meta_unroll={self.args.meta_unroll}")
        return " ".join(items)

    def run(self, model: str, name: str, lr: float, seed: int, keep_model: bool = False) -> dict[str, Any]:
        for record in self.runs:
            if (record["model"], record["optimizer"], record["lr"], record["seed"]) == (model, name, lr, seed):
                return record
        args = self.args
        out_dir = Path(args.runs_dir) / f"{model}-{name}-lr{lr:g}-seed{seed}"
        config, command = run_config([*shared_overrides(args, args.steps, model, seed), f"optimizer={name}",
                                      f"lr={lr:g}"], out_dir)
        settings = self.settings(command, name)
        if settings not in self.reused:
            self.load_reused()
        if settings in self.reused and not keep_model:
            record = {**self.reused[settings], "model": model, "optimizer": name, "lr": lr, "seed": seed,
                      "settings": settings}
            source = "reused"
        else:
            fresh(out_dir)
            hook = meta_step_hook(self.corpus, config, args.meta_every, args.meta_unroll)
            run = train(config, self.corpus, hook=hook, m3_update_rms=args.m3_update_rms)
            trained = run.pop("model")
            if keep_model and trained is not None:
                self.models[(model, name, lr, seed)] = trained
            record = {"model": model, "optimizer": name, "lr": lr, "seed": seed, **run, "command": command,
                      "settings": settings}
            source = f"wall {run['wall_seconds']:.0f}s"
        record["initial_val_bpb"] = self.initial_bpb(model, seed)
        self.runs.append(record)
        self.save_partial()
        bpb = "diverged" if record["diverged"] else f"{record['val_bpb']:.4f}"
        per_step = f"{record['seconds_per_step']:.2f}s/step" if record["seconds_per_step"] else ""
        print(f"  {model:16s} {name:21s} lr={lr:<8g} seed={seed} val bpb={bpb} {per_step} ({source})", flush=True)
        return record

    def save_partial(self) -> None:
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in vars(self.args).items() if k != "grids"}
        out.write_text(json.dumps({"partial": True, "config": config, "runs": self.runs}, indent=2))


def score(record: dict[str, Any]) -> float:
    return float("inf") if record["diverged"] else record["val_bpb"]


def diverged(record: dict[str, Any]) -> bool:
    """Stopped on non-finite values, or ended above the validation bpb of its initial weights."""
    return record["diverged"] or record["val_bpb"] > record["initial_val_bpb"]


def near_best(records: dict[float, dict[str, Any]], best: float) -> dict[str, Any]:
    """The grid's runs within 3x of ``best`` (1-3-10 grids: 10/3 apart counts as 3x), and which diverged."""
    near = {lr: r for lr, r in records.items() if best / 3.5 <= lr <= best * 3.5}
    return {"within_3x": {f"{lr:g}": score(r) for lr, r in near.items()},
            "diverged_within_3x": [f"{lr:g}" for lr, r in near.items() if diverged(r)]}


def tune(runner: Runner, name: str, grid: tuple[float, ...]) -> dict[str, Any]:
    """Run the grid on the grid model; extend it past whichever end holds the best point."""
    args, lrs = runner.args, sorted(grid)
    keep = args.continual and name == args.continual_optimizer
    for extension in range(args.extend + 1):
        records = {lr: runner.run(args.model, name, lr, args.seed, keep_model=keep) for lr in lrs}
        best = min(lrs, key=lambda lr: score(records[lr]))
        if best not in (lrs[0], lrs[-1]) or extension == args.extend or score(records[best]) == float("inf"):
            break
        lrs = [lr_beyond(lrs[0], up=False), *lrs] if best == lrs[0] else [*lrs, lr_beyond(lrs[-1], up=True)]
    finished = score(records[best]) < float("inf")
    edge = None if best not in (lrs[0], lrs[-1]) else "low" if best == lrs[0] else "high"
    return {"optimizer": name, "grid": lrs, "lr": best if finished else None,
            "best_at_grid_edge": edge if finished else None,
            "initial_val_bpb": records[best]["initial_val_bpb"], **near_best(records, best)}


def seed_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, range and sample standard deviation of validation bpb over seeds; time per step."""
    finished = [r for r in records if not r["diverged"]]
    bpbs = [r["val_bpb"] for r in finished]
    out: dict[str, Any] = {"seeds": [r["seed"] for r in records], "val_bpb": [score(r) for r in records],
                           "diverged_seeds": [r["seed"] for r in records if r["diverged"]]}
    if bpbs:
        out.update(mean=statistics.fmean(bpbs), min=min(bpbs), max=max(bpbs),
                   std=statistics.stdev(bpbs) if len(bpbs) > 1 else 0.0,
                   seconds_per_step=statistics.fmean(r["seconds_per_step"] for r in finished))
    return out


def parse_confirm(items: list[str], names: list[str]) -> dict[str, list[str]]:
    """``MODEL`` or ``MODEL=OPT,OPT`` -> {model: optimizers}."""
    out = {}
    for item in items:
        model, sep, opts = item.partition("=")
        chosen = [o.strip().lower() for o in opts.split(",")] if sep else names
        unknown = [o for o in chosen if o not in names]
        if unknown:
            raise argparse.ArgumentTypeError(f"--confirm {item!r}: {', '.join(unknown)} not in --optimizers")
        out[model.strip()] = chosen
    return out


def benchmark(runner: Runner, grids: dict[str, tuple[float, ...]]) -> dict[str, Any]:
    """Grids, seeds at the best lr, and confirmation on other models; one row per (model, optimizer)."""
    args = runner.args
    best = {name: tune(runner, name, grid) for name, grid in grids.items()}
    rows = []
    plan = {args.model: list(grids), **args.confirm}
    for model, names in plan.items():
        for name in names:
            lr = best[name]["lr"]
            if lr is None:
                rows.append({"model": model, "optimizer": name, "lr": None})
                continue
            seeds = args.seeds if model == args.model or name in args.focus else args.seeds[:1]
            seeds = seed_summary([runner.run(model, name, lr, seed) for seed in seeds])
            row = {"model": model, "optimizer": name, "lr": lr, **seeds}
            if model == args.neighbour_model and name in args.neighbours:
                row["neighbours"] = {f"{new:g}": score(runner.run(model, name, new, args.seed))
                                     for new in (lr_beyond(lr, up=False), lr_beyond(lr, up=True))}
            rows.append(row)
    if args.time_rounds:
        interleaved_step_times(runner, rows)
    return {"best": list(best.values()), "rows": rows}


def interleaved_step_times(runner: Runner, rows: list[dict[str, Any]]) -> None:
    """Seconds per training step of every row's (model, optimizer, lr), timed in round-robin order.

    The runs above met whatever load the machine had at their time; here every row runs ``--time-steps``
    steps per round, rows alternating, ``--time-rounds`` rounds, so all see the same load. A row's time is
    the median over rounds of (time from step 1 to the last step) / (steps − 1), meta-steps included.
    """
    args = runner.args
    timed = [row for row in rows if row.get("lr") is not None]
    samples: dict[int, list[float]] = {id(row): [] for row in timed}
    for round_index in range(args.time_rounds):
        for row in timed:
            out_dir = fresh(Path(args.runs_dir) / f"timing-{row['model']}-{row['optimizer']}")
            overrides = shared_overrides(args, args.time_steps, row["model"], args.seed)
            config, _ = run_config([*overrides, f"optimizer={row['optimizer']}", f"lr={row['lr']:g}",
                                    f"eval_tokens={args.batch_size * args.seq_len}"], out_dir)
            stamps: list[float] = []
            meta = meta_step_hook(runner.corpus, config, args.meta_every, args.meta_unroll)

            def hook(trainer: Trainer, record: dict, meta: Any = meta, stamps: list[float] = stamps) -> None:
                stamps.append(time.perf_counter())
                meta(trainer, record)

            train(config, runner.corpus, hook=hook, m3_update_rms=args.m3_update_rms)
            samples[id(row)].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
        print(f"  timing round {round_index + 1}/{args.time_rounds} done", flush=True)
    for row in timed:
        row["interleaved_seconds_per_step"] = statistics.median(samples[id(row)])


def fisher_batches(corpus: Corpus, config: TrainConfig, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` training batches of corpus A (a stream the training runs do not use)."""
    source = CorpusWindows(corpus.train, config.seq_len, config.seed, stream=7)
    batches = [make_batch(source, step, range(config.batch_size)) for step in range(count)]
    return [(b.input_ids, b.targets) for b in batches]


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
def bpb_text(value: float | None) -> str:
    return "diverged" if value is None or value == float("inf") else f"{value:.4f}"


def print_tables(result: dict) -> None:
    cfg = result["config"]
    print(f"\nOptimizers through the trainer: {cfg['steps']} steps of batch {cfg['batch_size']} x "
          f"{cfg['seq_len']} on {cfg['data']}; grids on {cfg['model']}, seeds {cfg['seeds']}")
    runs = {(r["model"], r["optimizer"], r["lr"], r["seed"]): r for r in result["runs"]}
    print("| model | optimizer | lr grid (val bpb, seed 0) | best lr | val bpb mean | range | std | s/step |"
          " s/step interleaved |\n|---|---|---|---|---|---|---|---|---|")
    grids = {b["optimizer"]: b for b in result["best"]}
    for row in result["rows"]:
        name = DISPLAY.get(row["optimizer"], row["optimizer"])
        if row["model"] == cfg["model"]:
            tuned = grids[row["optimizer"]]
            grid = ", ".join(f"{lr:g} ({bpb_text(score(runs[(row['model'], row['optimizer'], lr, cfg['seed'])]))})"
                             for lr in tuned["grid"])
        else:
            grid = ", ".join(f"{lr} ({bpb_text(v)})" for lr, v in row.get("neighbours", {}).items())
        if row["lr"] is None or "mean" not in row:
            print(f"| {row['model']} | {name} | {grid} | diverged | | | | | |")
            continue
        edge = grids[row["optimizer"]]["best_at_grid_edge"] if row["model"] == cfg["model"] else None
        note = f" ({edge} end)" if edge else ""
        stopped = f", {len(row['diverged_seeds'])} diverged" if row["diverged_seeds"] else ""
        interleaved = f"{row['interleaved_seconds_per_step']:.2f}" if "interleaved_seconds_per_step" in row else ""
        print(f"| {row['model']} | {name} | {grid} | {row['lr']:g}{note} | {row['mean']:.4f}{stopped} | "
              f"{row['min']:.4f}–{row['max']:.4f} | {row['std']:.4f} | {row['seconds_per_step']:.2f} | "
              f"{interleaved} |")
    print(f"\nDivergence near the best lr on {cfg['model']} (seed {cfg['seed']}): a run diverged if it stopped on "
          "non-finite values or ended above the validation bpb of its initial weights")
    print("| optimizer | best lr | initial val bpb | val bpb within 3x of best | diverged within 3x |\n"
          "|---|---|---|---|---|")
    for tuned in result["best"]:
        if tuned["lr"] is None:
            continue
        near = ", ".join(f"{lr} ({bpb_text(v)})" for lr, v in tuned["within_3x"].items())
        print(f"| {DISPLAY.get(tuned['optimizer'], tuned['optimizer'])} | {tuned['lr']:g} | "
              f"{tuned['initial_val_bpb']:.4f} | {near} | {', '.join(tuned['diverged_within_3x']) or 'none'} |")
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
    parser.add_argument("--model", default="transformer-tiny", help="trainer model preset of the lr grids")
    parser.add_argument("--confirm", nargs="*", default=["mac-tiny", "hope-tiny=adamw,m3"],
                        metavar="MODEL[=OPT,OPT]", help="models that rerun each best lr (default: all optimizers)")
    parser.add_argument("--focus", nargs="*", default=["adamw", "m3"],
                        help="optimizers run with every seed on the --confirm models (others: the first seed)")
    parser.add_argument("--neighbours", nargs="*", default=["adamw", "m3"],
                        help="optimizers also run at about best lr / 3 and x 3 on --neighbour-model")
    parser.add_argument("--neighbour-model", default="mac-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extend", type=int, default=3, help="most grid extensions per optimizer")
    parser.add_argument("--data", default="stdlib", help="corpus A (trainer data spec)")
    parser.add_argument("--optimizers", nargs="+", default=list(DEFAULT_OPTIMIZERS),
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
    parser.add_argument("--m3-update-rms", type=float, default=M3_UPDATE_RMS,
                        help="update_rms of the stable M3 variants (default: M3's)")
    parser.add_argument("--meta-every", type=int, default=10, help="NestedDeepMomentumGD: steps per meta_step")
    parser.add_argument("--meta-unroll", type=int, default=2, help="NestedDeepMomentumGD: look-ahead steps")
    parser.add_argument("--time-steps", type=int, default=21, help="steps per interleaved timing run")
    parser.add_argument("--time-rounds", type=int, default=3, help="interleaved timing rounds (0: none)")
    parser.add_argument("--reuse", nargs="*", default=[],
                        help="JSON files of earlier (or interrupted, or concurrent) runs: reuse their runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--continual", action="store_true", help="also run the EWC continual-learning part")
    parser.add_argument("--continual-optimizer", default="adamw")
    parser.add_argument("--continual-steps", type=int, default=150)
    parser.add_argument("--fisher-batches", type=int, default=16)
    parser.add_argument("--ewc-lambdas", type=float, nargs="*", default=[1e3, 1e4, 1e5, 1e6])
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "eval_tokens", "threads", "continual_steps", "fisher_batches",
                 "meta_every", "meta_unroll"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.extend < 0 or args.time_rounds < 0:
        parser.error("--extend and --time-rounds must be >= 0")
    if args.time_steps < 2:
        parser.error("--time-steps must be >= 2")
    if not args.m3_update_rms > 0:
        parser.error("--m3-update-rms must be > 0")
    if any(lam < 0 for lam in args.ewc_lambdas):
        parser.error("--ewc-lambdas must be >= 0")
    names = [n.lower() for n in args.optimizers]
    try:
        custom = parse_grid(args.grid)
        args.confirm = parse_confirm(args.confirm, names)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))
    args.seed = args.seeds[0]
    args.neighbours = [n.lower() for n in args.neighbours]
    args.focus = [n.lower() for n in args.focus]
    args.continual_optimizer = args.continual_optimizer.lower()
    if args.continual and args.continual_optimizer not in names:
        parser.error("--continual-optimizer must be one of --optimizers (phase A reuses its grid run)")
    missing = [n for n in names if n not in custom and n not in DEFAULT_GRIDS]
    if missing:
        parser.error(f"no default lr grid for {', '.join(missing)}; give one with --grid NAME=LR,LR")
    args.grids = {n: custom.get(n, DEFAULT_GRIDS.get(n, ())) for n in names}
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base, _ = run_config(shared_overrides(args, args.steps), Path(args.runs_dir))
    corpus_a = load_corpus(base.data, base.tokenizer, val_fraction=base.val_fraction, max_bytes=base.max_bytes or None)
    print(f"corpus A ({base.data}): {len(corpus_a.train)} train / {len(corpus_a.validation)} validation tokens",
          flush=True)
    runner = Runner(args, corpus_a)
    tables = benchmark(runner, args.grids)
    result: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "grids"},
        "grids": {k: list(v) for k, v in args.grids.items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "numpy": np.__version__},
        "runs": runner.runs,
        **tables,
    }
    if args.continual:
        best = next(r for r in tables["best"] if r["optimizer"] == args.continual_optimizer)
        if best["lr"] is None:
            print(f"{args.continual_optimizer} diverged at every lr: no continual-learning run")
        else:
            corpus_b = other_text_corpus(base.tokenizer, base.val_fraction)
            print(f"corpus B (other stdlib text): {len(corpus_b.train)} train / {len(corpus_b.validation)} "
                  "validation tokens", flush=True)
            model_a = runner.models[(args.model, args.continual_optimizer, best["lr"], args.seed)]
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
