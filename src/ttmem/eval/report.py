"""The main job: train a memory model, train or reuse a same-size baseline, compare, write a report.

Design: the baseline is an ordinary run in `OUT/baseline` with the same data, steps, seed and size as the
main run but the baseline's preset; a finished baseline with the same run-defining config is reused, a
partial one is resumed. The whole job holds the lock of `OUT` (the baseline's folder lies inside it),
and the baseline's spec is checked before the main model trains. Both models are evaluated on the same
validation windows (bits per byte) and the same needle examples at 1x, 2x and 4x the training length;
the report is `report.md` with PNG plots next to it, and `summary.json` with the numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ttmem.data import get_tokenizer, needle_example
from ttmem.eval.pipeline import evaluate_model, format_table, load_trained, report_depths
from ttmem.eval.recall import save_heatmap
from ttmem.eval.recall_study import RecallStudy, is_preset, plot_recall, recall_rows, run_studies
from ttmem.train.checkpoint import list_checkpoints
from ttmem.train.config import TrainConfig
from ttmem.train.logs import read_log
from ttmem.train.modelspec import build_from_spec
from ttmem.train.runlock import run_lock
from ttmem.train.trainer import Trainer, TrainResult


def run_label(spec: str) -> str:
    """Short display name of a model spec (a preset name, or FILE.py:FACTORY without the folders)."""
    return Path(spec).name if ":" in spec else spec


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def baseline_config(config: TrainConfig) -> TrainConfig:
    """The baseline's run: same data, steps and seed; the size overrides (`model_args`) carry over
    when both models are presets (one ModelConfig type), so the two stay the same size."""
    both_presets = ":" not in config.model and ":" not in config.baseline
    return dataclasses.replace(
        config,
        model=config.baseline,
        model_args=dict(config.model_args) if both_presets else {},
        baseline="none",
        report=False,
        out_dir=str(Path(config.out_dir) / "baseline"),
    )


def _train_baseline(config: TrainConfig, progress: bool, allow_changes: Iterable[str]) -> TrainResult:
    """Train, resume or reuse the baseline; resuming checks its config like any run's."""
    found = list_checkpoints(Path(config.out_dir) / "checkpoints")
    return Trainer(config, progress=progress).fit(resume=bool(found), allow_changes=allow_changes)


def _check_baseline_spec(config: TrainConfig) -> None:
    """Build the baseline on the meta device (no memory, no compute) so a bad name fails before training."""
    if config.baseline in ("", "none"):
        return
    base = baseline_config(config)
    with torch.device("meta"):
        try:
            build_from_spec(base.model, base.model_args, get_tokenizer(config.tokenizer).vocab_size)
        except (ValueError, TypeError) as err:
            raise ValueError(f"baseline={config.baseline}: {err}") from None


def _plots(
    out_dir: Path,
    results: dict[str, dict[str, Any]],
    lengths: list[int],
    depths: np.ndarray,
    logs: dict[str, Path],
) -> list[str]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, metrics in results.items():
        path = out_dir / f"needle_{_file_name(name)}.png"
        save_heatmap(metrics["needle_grid"], lengths, depths, path, title=f"needle recall: {name}")
        files.append(path.name)
    fig, (ax_loss, ax_recall) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, log_path in logs.items():
        records = [r for r in read_log(log_path) if "loss" in r]
        ax_loss.plot([r["step"] for r in records], [r["loss"] for r in records], label=name)
    ax_loss.set(xlabel="step", ylabel="training loss (nats / token)", title="training loss")
    ax_loss.legend()
    for name, metrics in results.items():
        ax_recall.plot(lengths, [metrics[f"needle@{n}"] for n in lengths], marker="o", label=name)
    ax_recall.set(
        xlabel="context length (tokens)",
        ylabel="needle accuracy",
        title="needle recall vs length",
        ylim=(-0.05, 1.05),
        xscale="log",
        xticks=lengths,
    )
    ax_recall.set_xticklabels([str(n) for n in lengths])
    ax_recall.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # no 2x10^2-style labels
    ax_recall.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "comparison.png", dpi=100)
    plt.close(fig)
    return ["comparison.png", *files]


def recall_study(config: TrainConfig, progress: bool = False) -> tuple[dict[str, dict[str, Any]], str]:
    """The recall study of the main model and the baseline (``ttmem.eval.recall_study``), each reused from
    ``OUT/recall/`` when already done; ({label: result}, "") or ({}, the reason it was skipped)."""
    if not config.recall:
        return {}, "recall=false"
    models = {run_label(config.model): (config.model, config.model_args)}
    if config.baseline not in ("", "none"):
        label = run_label(config.baseline)
        models[label if label not in models else f"{label} (baseline)"] = (
            config.baseline, baseline_config(config).model_args)
    if config.recall_reference not in ("", "none") and run_label(config.recall_reference) not in models:
        models[run_label(config.recall_reference)] = (config.recall_reference, {})
    not_presets = [spec for spec, _ in models.values() if not is_preset(spec)]
    if not_presets:
        return {}, f"the recall study rebuilds preset models; {not_presets[0]} is not a preset"
    study = RecallStudy(**{"seed": config.seed, **config.recall_args})
    jobs = {label: (Path(config.out_dir) / "recall" / f"{_file_name(label)}.json", spec, args)
            for label, (spec, args) in models.items()}
    return run_studies(jobs, study, progress), ""


def _recall_section(recall: dict[str, dict[str, Any]], skipped: str) -> list[str]:
    if not recall:
        return ["## Recall past the window", "", f"Not run: {skipped}.", ""] if skipped != "recall=false" else []
    first = next(iter(recall.values()))
    study = first["study"]
    return [
        "## Recall past the window",
        "",
        f"Every model rebuilt at dim {study['dim']}, depth {study['depth']}, {study['heads']} heads, window "
        f"{study['window']} (the window stack sees {first['reach']} tokens back), with equal parameter counts, "
        f"trained from seed {study['seed']} on the same MQAR batches ({study['num_kv_pairs']} key-value pairs, "
        f"vocabulary {study['vocab_size']}, length {study['seq_len']}; {study['steps']} AdamW steps of "
        f"{study['batch_size']} at lr {study['lr']:g}); scored on {study['eval_examples']} held-out examples per "
        f"length. 'Past window' = queries whose key is more than {first['reach']} tokens back; chance "
        f"{first['chance']:.3f}.",
        "",
        format_table(recall_rows(recall), markdown=True),
        "",
        "![recall.png](recall.png)",
        "",
    ]


def write_report(config: TrainConfig, runs: dict[str, TrainResult], progress: bool = False) -> dict[str, Any]:
    """Evaluate every run the same way and write report.md, PNGs and summary.json into out_dir."""
    out_dir = Path(config.out_dir)
    lengths = [config.seq_len, 2 * config.seq_len, 4 * config.seq_len]
    depths = report_depths(config.eval_depths)
    corpus = next(iter(runs.values())).corpus
    results = {}
    for name, run in runs.items():
        # FSDP leaves each process a shard of the weights: evaluate the full weights of the checkpoint.
        sharded = config.distributed == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1
        model = load_trained(run.checkpoint)[0] if sharded else run.model
        results[name] = evaluate_model(
            model,
            corpus,
            config.seq_len,
            eval_tokens=config.eval_tokens,
            needle_lengths=lengths,
            depths=config.eval_depths,
            samples=config.eval_samples,
            tokenizer=config.tokenizer,
            seed=config.seed,
            progress=progress,
        )
        results[name]["params"] = sum(p.numel() for p in run.model.parameters())
        results[name]["steps"] = run.step
    plots = _plots(out_dir, results, lengths, depths, {n: r.out_dir / "log.jsonl" for n, r in runs.items()})
    recall, skipped = recall_study(config, progress)
    if recall:
        plot_recall(recall, out_dir / "recall.png")
    rows = [
        {"model": name, "params": m["params"], "steps": m["steps"], "val_bpb": m["val_bpb"]}
        for name, m in results.items()
    ]
    needle_rows = [
        {"model": name, **{f"needle@{n} ({n // config.seq_len}x)": m[f"needle@{n}"] for n in lengths}}
        for name, m in results.items()
    ]
    lines = [
        "# ttmem run report",
        "",
        *_recall_section(recall, skipped),
        "## Language modelling",
        "",
        f"Data: `{config.data}` ({config.tokenizer} tokens), training length {config.seq_len}, "
        f"{config.steps} steps of {config.batch_size} sequences, seed {config.seed}; "
        f"`{config.aux_task or 'no'}` task share {config.aux_fraction:g}. "
        f"Validation bits per byte on the first {config.eval_tokens} validation tokens (lower is better).",
        "",
        format_table(rows, markdown=True),
        "",
        f"Needle (a 7-digit passkey in the corpus' text, answered exactly; {len(depths)} depths x "
        f"{config.eval_samples} examples per length): too hard for models of this size and budget, kept to show "
        "when a longer run learns it (`ttmem eval --needle` draws the heatmap).",
        "",
        format_table(needle_rows, markdown=True),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
        "Reproduce: `ttmem train` with the resolved config in `config.yaml` (a second run reuses the finished runs "
        "and the recall study in `recall/`); the recall study alone, over seeds: "
        "`python benchmarks/main_job_recall.py --models SPEC --seeds 0,1,2`.",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))
    summary: dict[str, Any] = {
        name: {k: v for k, v in m.items() if not isinstance(v, np.ndarray)} for name, m in results.items()}
    table = format_table([{**r, **n} for r, n in zip(rows, needle_rows, strict=True)])
    if recall:
        first, study_rows = next(iter(recall.values())), recall_rows(recall)
        summary["recall_study"] = {"rows": study_rows, "chance": first["chance"], "reach": first["reach"]}
        table = (f"recall past the window (MQAR, chance {first['chance']:.3f}):\n" + format_table(study_rows)
                 + "\n\nlanguage modelling:\n" + table)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"rows": rows, "report": str(out_dir / "report.md"), "plots": plots + (["recall.png"] if recall else []),
            "table": table, "recall": recall}


def run_main_job(
    config: TrainConfig, resume: bool | str = False, progress: bool = True, allow_changes: Iterable[str] = ()
) -> dict[str, Any]:
    """Train `config.model`, then the baseline (if any), then write the comparison report."""
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with run_lock(config.out_dir) if main_rank else contextlib.nullcontext():
        return _main_job(config, resume, progress, tuple(allow_changes))


def _check_recall_args(config: TrainConfig) -> None:
    """The recall study's overrides name its fields and build a valid study, and its reference model is a preset
    (checked before training)."""
    if config.recall and config.recall_reference not in ("", "none") and not is_preset(config.recall_reference):
        raise ValueError(f"config key 'recall_reference' must be a model preset or none, got "
                         f"'{config.recall_reference}'")
    if not config.recall_args:
        return
    known = {f.name for f in dataclasses.fields(RecallStudy)}
    unknown = sorted(set(config.recall_args) - known)
    if unknown:
        raise ValueError(f"config key 'recall_args.{unknown[0]}' is unknown; valid: {', '.join(sorted(known))}")
    try:
        RecallStudy(**config.recall_args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config key 'recall_args': {err}") from None


def _main_job(
    config: TrainConfig, resume: bool | str, progress: bool, allow_changes: tuple[str, ...]
) -> dict[str, Any]:
    _check_baseline_spec(config)
    _check_recall_args(config)
    if config.report:  # fail before training, not after it
        try:
            needle_example(np.random.default_rng(0), config.seq_len, 0.5, get_tokenizer(config.tokenizer))
        except ValueError as err:
            raise ValueError(
                f"the report's needle evaluation cannot run: {err}; raise seq_len or set report=false"
            ) from None
    main = Trainer(config, progress=progress)
    result = main.fit(resume, allow_changes)
    out: dict[str, Any] = {"main": result}
    if result.interrupted:
        return out
    runs = {run_label(config.model): result}
    if config.baseline not in ("", "none"):
        base = _train_baseline(baseline_config(config), progress, allow_changes)
        out["baseline"] = base
        if base.interrupted:
            return out
        label = run_label(config.baseline)
        runs[label if label not in runs else f"{label} (baseline)"] = base
    if config.report and main.env.is_main:
        out["report"] = write_report(config, runs, progress)
    return out
