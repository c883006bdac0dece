"""The main job's recall study: does the memory model recall what the window cannot?

Both models of the main job (the memory model and the sliding-window baseline) are rebuilt at one small
shape, with equal parameter counts, and trained from the same seed on the same multi-query associative recall
(MQAR, Zoology's rules) batches for the same number of steps. Each is then scored on held-out examples at 1x,
2x and 4x the training length, query by query, by how far back the query's key sits.

Design choices:
- Small models on purpose. The language-model runs of the main job are too short to learn MQAR; a 160K-parameter
  model learns it in a few hundred steps (when its architecture can), which fits the main job's ten minutes.
- The reach of a window stack is ``depth * window`` tokens: a query whose key is further back is out of sight
  of every sliding-window layer together, so a window model can only guess there (chance = 1 / the number of
  value tokens). "Past the window" means exactly that set of queries.
- Equal parameters: the Transformer at ``mlp_ratio`` sets the count; every other model's SwiGLU width is solved
  to match it (within one step of 8 hidden units).
- Finished studies are kept as JSON next to the run (``recall/<label>.json``) together with everything that
  defines them, and reused only when that record matches: a second main job does not retrain.
- One thread per model, the models side by side in their own processes (``run_studies``). Models this small
  gain little from a second thread in each small operation and lose a lot when another program competes for the
  cores (measured: lmm_linear 0.29 s per step on one thread, 1.57 s on two beside one busy process); two
  single-threaded processes use both cores without that cost, and the result does not depend on how many ran
  at once.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ttmem.eval.mqar import EVAL_STREAM, MQARRecipe, chance_accuracy, key_distances, mqar_batch, train_mqar
from ttmem.fileio import atomic_write_text
from ttmem.train.objective import logits_of

SHAPE_KEYS = ("vocab_size", "dim", "depth", "heads", "window", "chunk_size", "segment_len", "mlp_ratio")


@dataclass(frozen=True)
class RecallStudy:
    """Task, model shape and budget of the recall study (the same for every model)."""

    seq_len: int = 256
    num_kv_pairs: int = 8
    vocab_size: int = 64
    steps: int = 800  # 400 left seed 0 before its jump (0.107 past the window); README, "Main job"
    batch_size: int = 32
    lr: float = 1e-2
    dim: int = 64
    depth: int = 2
    heads: int = 2
    window: int = 16
    chunk_size: int = 32
    segment_len: int = 32
    mlp_ratio: float = 4.0  # the Transformer's; it sets the parameter count every model matches
    eval_examples: int = 256
    length_factors: tuple[int, ...] = (1, 2, 4)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("seq_len", "num_kv_pairs", "steps", "batch_size", "dim", "depth", "heads", "window",
                     "eval_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"recall study: {name} must be >= 1, got {getattr(self, name)}")
        if not self.length_factors or any(f < 1 for f in self.length_factors):
            raise ValueError(f"recall study: length_factors must be integers >= 1, got {self.length_factors}")
        if self.reach >= self.seq_len:
            raise ValueError(f"recall study: the window stack's reach depth * window = {self.reach} must be "
                             f"shorter than seq_len = {self.seq_len}, or no query lies past it")

    @property
    def reach(self) -> int:
        """How far back (in tokens) a stack of ``depth`` sliding-window layers can see."""
        return self.depth * self.window

    def recipe(self, factor: int = 1) -> MQARRecipe:
        return MQARRecipe(seq_len=self.seq_len * factor, num_kv_pairs=self.num_kv_pairs, vocab_size=self.vocab_size,
                          steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                          eval_examples=self.eval_examples, seed=self.seed)

    def shape(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SHAPE_KEYS if key != "mlp_ratio"}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["length_factors"] = list(self.length_factors)
        return out


def is_preset(spec: str) -> bool:
    """Whether a model spec names a preset (the recall study rebuilds only those), not a FILE.py:FACTORY."""
    from ttmem.models.presets import MODEL_PRESETS

    return ":" not in spec and spec in MODEL_PRESETS


def build_study_model(spec: str, model_args: Mapping[str, Any], study: RecallStudy) -> nn.Module:
    """``spec`` (a preset) at the study's shape, with the non-shape ``model_args`` (memory rule, gates, ...)
    kept, and its SwiGLU width solved to match the Transformer's parameter count at that shape."""
    from ttmem.models import build_model, count_parameters

    if not is_preset(spec):
        raise ValueError(f"the recall study rebuilds models from presets; '{spec}' is not one")
    kept = {k: v for k, v in model_args.items() if k not in SHAPE_KEYS}
    shape = study.shape()
    target = count_parameters(build_model("transformer-tiny", mlp_ratio=study.mlp_ratio, **shape))

    def count(hidden: int) -> int:
        return count_parameters(build_model(spec, mlp_ratio=hidden / study.dim, **shape, **kept))

    low, high = count(8), count(16)
    steps = round((target - low) / (high - low))
    if steps < 0:
        raise ValueError(f"{spec} has {low:,} parameters at the recall study's shape with the narrowest MLP, more "
                         f"than the Transformer's {target:,}; raise the study's mlp_ratio")
    return build_model(spec, mlp_ratio=(8 + 8 * steps) / study.dim, **shape, **kept)


def distance_edges(longest: int) -> list[int]:
    """Bin edges 0, 1, 2, 4, ... up to the first power of two >= ``longest``: bins (edge_i, edge_i+1]."""
    edges = [0, 1]
    while edges[-1] < longest:
        edges.append(edges[-1] * 2)
    return edges


@torch.no_grad()
def accuracy_by_distance(model: nn.Module, study: RecallStudy, factor: int, batch_size: int = 64) -> dict[str, Any]:
    """Per-query accuracy on held-out MQAR examples at ``factor`` times the training length: hits and counts per
    distance bin (``distance_edges``), and the totals within and past the window stack's reach."""
    recipe = study.recipe(factor)
    device = next(model.parameters()).device
    edges = distance_edges(recipe.seq_len)
    hits, counts = np.zeros(len(edges) - 1, dtype=np.int64), np.zeros(len(edges) - 1, dtype=np.int64)
    near, beyond = [0, 0], [0, 0]  # hits, count
    was_training = model.training
    model.eval()
    all_inputs, all_targets = mqar_batch(recipe, EVAL_STREAM, 0, recipe.eval_examples)  # whatever the batch size
    try:
        for start in range(0, recipe.eval_examples, batch_size):
            inputs, targets = all_inputs[start : start + batch_size], all_targets[start : start + batch_size]
            distance = key_distances(inputs, targets, recipe.num_kv_pairs)
            predicted = logits_of(model(torch.from_numpy(inputs).to(device))).argmax(-1).cpu().numpy()
            asked = distance >= 0
            correct = (predicted == targets)[asked]
            d = distance[asked]
            bins = np.searchsorted(edges, d, side="left") - 1  # bin i holds (edges[i], edges[i+1]]
            np.add.at(hits, bins, correct)
            np.add.at(counts, bins, 1)
            for total, mask in ((near, d <= study.reach), (beyond, d > study.reach)):
                total[0] += int(correct[mask].sum())
                total[1] += int(mask.sum())
    finally:
        model.train(was_training)
    return {
        "seq_len": recipe.seq_len, "edges": edges, "hits": hits.tolist(), "counts": counts.tolist(),
        "near": near[0] / max(near[1], 1), "near_n": near[1],
        "beyond": beyond[0] / max(beyond[1], 1), "beyond_n": beyond[1],
    }


def run_study(spec: str, model_args: Mapping[str, Any], study: RecallStudy, progress: bool = False,
              label: str = "") -> dict[str, Any]:
    """Train ``spec`` at the study's shape on MQAR from the study's seed and score it at every length factor."""
    from ttmem.models import count_parameters

    torch.manual_seed(study.seed)
    model = build_study_model(spec, model_args, study)
    start = time.perf_counter()
    losses = train_mqar(model, study.recipe(), progress_desc=f"recall study: {label or spec}" if progress else None)
    seconds = time.perf_counter() - start
    scores = {f"{f}x": accuracy_by_distance(model, study, f) for f in study.length_factors}
    return {"spec": spec, "model_args": dict(model_args), "study": study.to_dict(),
            "parameters": count_parameters(model), "train_seconds": seconds,
            "final_loss": float(np.mean(losses[-20:])), "losses": losses, "chance": chance_accuracy(study.recipe()),
            "reach": study.reach, "scores": scores}


def cached_study(path: Path, spec: str, model_args: Mapping[str, Any], study: RecallStudy, progress: bool = False,
                 label: str = "") -> dict[str, Any]:
    """``run_study``'s result, reused from ``path`` when it holds a finished study of the same definition."""
    definition = {"spec": spec, "model_args": json.loads(json.dumps(dict(model_args))), "study": study.to_dict()}
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
        if {key: stored.get(key) for key in definition} == definition:
            return stored
    result = run_study(spec, model_args, study, progress, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1))
    return result


def _single_threaded_study(path: Path, spec: str, model_args: Mapping[str, Any], study: RecallStudy,
                           progress: bool, label: str) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cached_study(path, spec, model_args, study, progress, label)
    finally:
        torch.set_num_threads(threads)


def run_studies(jobs: Mapping[str, tuple[Path, str, Mapping[str, Any]]], study: RecallStudy, progress: bool = False,
                workers: int | None = None) -> dict[str, dict[str, Any]]:
    """{label: result} for {label: (json path, spec, model_args)}: each model on one thread, up to ``workers``
    (default: the number of cores) in separate processes at once; finished studies are reused."""
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers <= 1:
        return {label: _single_threaded_study(path, spec, args, study, progress, label)
                for label, (path, spec, args) in jobs.items()}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {label: pool.submit(_single_threaded_study, path, spec, dict(args), study, progress, label)
                   for label, (path, spec, args) in jobs.items()}
        return {label: future.result() for label, future in futures.items()}


def plot_recall(results: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Accuracy against key distance (one colour per model, one line style per length factor), the window
    stack's reach marked, chance drawn; and accuracy past the reach against the evaluation length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = ["-", "--", ":", "-."]
    fig, (ax_d, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    first = next(iter(results.values()))
    for color, (name, result) in enumerate(results.items()):
        for style, (factor, score) in zip(styles, result["scores"].items(), strict=False):
            edges, hits, counts = score["edges"], np.array(score["hits"]), np.array(score["counts"])
            shown = counts > 0
            centers = np.array([max(edges[i], 1) * 2 ** 0.5 for i in range(len(counts))])
            ax_d.plot(centers[shown], (hits / np.maximum(counts, 1))[shown], style, color=f"C{color}", marker="o",
                      markersize=3, label=f"{name}, {factor}")
        factors = [int(k[:-1]) for k in result["scores"]]
        ax_l.plot([f * result["study"]["seq_len"] for f in factors],
                  [s["beyond"] for s in result["scores"].values()], marker="o", color=f"C{color}", label=name)
    for ax in (ax_d, ax_l):
        ax.axhline(first["chance"], color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xscale("log", base=2)
    ax_d.axvline(first["reach"] + 0.5, color="black", linewidth=1)
    ax_d.text(first["reach"] * 1.1, 0.97, "window stack's reach", fontsize=8, va="top")
    ax_d.set(xlabel="distance from query back to its key (tokens)", ylabel="accuracy",
             title="MQAR recall by distance (grey: chance)")
    ax_d.legend(fontsize=7)
    ax_l.set(xlabel="evaluation length (tokens)", ylabel="accuracy past the reach",
             title="length generalisation (trained at 1x)")
    ax_l.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def recall_rows(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One table row per model: accuracy past the reach at every length factor, and within it at 1x."""
    rows = []
    for name, result in results.items():
        scores = result["scores"]
        rows.append({
            "model": name, "params": result["parameters"], "steps": result["study"]["steps"],
            **{f"past window {k}": s["beyond"] for k, s in scores.items()},
            "within window 1x": scores["1x"]["near"],
            "train s": int(round(result["train_seconds"])),
        })
    return rows
