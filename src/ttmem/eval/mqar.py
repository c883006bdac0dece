"""MQAR recall past a sliding window: train small models on MQAR, score queries by key distance.

The question is Zoology's: can a model answer a query whose key-value pair lies further back than a
sliding-window Transformer can see? A stack of ``depth`` sliding-window attention layers of window
``w`` moves information at most ``depth * (w - 1)`` positions back, so queries whose key is further away
than ``depth * w`` tokens are out of its reach; a recurrent memory has no such limit.

Design choices:
- Training and evaluation data both come from ``mqar_example`` (Zoology's rules), seeded per row with
  ``row_rng`` on separate streams, so the held-out examples never appear in training.
- The loss is cross-entropy on the answer positions only (the targets are -100 elsewhere).
- The trainer's optimiser, schedule and update (`ttmem.train.optim`): AdamW (matrices decayed, gains and
  biases not) with linear warm-up then cosine decay to 10%, gradient clipping at 1; one fixed torch seed
  per model.
- Accuracy is per answer token (Zoology's metric), split by the distance from the query back to its
  key in the key-value block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttmem.data import IGNORE, mqar_example, row_rng
from ttmem.progress import progress_bar
from ttmem.train.objective import logits_of
from ttmem.train.optim import apply_update, build_optimizer, clip_gradients, warmup_cosine

TRAIN_STREAM, EVAL_STREAM = 21, 22
BETAS, GRAD_CLIP, MIN_LR_RATIO = (0.9, 0.98), 1.0, 0.1


@dataclass
class MQARRecipe:
    """Task, optimisation and evaluation settings shared by every model of a comparison."""

    seq_len: int = 256
    num_kv_pairs: int = 8
    vocab_size: int = 64
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-2
    warmup: int = 30
    weight_decay: float = 0.1
    eval_examples: int = 256
    seed: int = 0

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def mqar_batch(recipe: MQARRecipe, stream: int, step: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """inputs, targets [rows, seq_len] of MQAR examples seeded by (recipe.seed, stream, step, row)."""
    examples = [
        mqar_example(row_rng(recipe.seed, stream, step, i), recipe.seq_len, recipe.num_kv_pairs, recipe.vocab_size)
        for i in range(rows)
    ]
    return np.stack([e[0] for e in examples]), np.stack([e[1] for e in examples])


def key_distances(inputs: np.ndarray, targets: np.ndarray, num_kv_pairs: int) -> np.ndarray:
    """For every answer position (targets != -100), how many tokens back its key sits in the key-value
    block; -1 elsewhere. inputs, targets: [N, T]."""
    distances = np.full(targets.shape, -1, dtype=np.int64)
    rows, cols = np.nonzero(targets != IGNORE)
    keys = inputs[:, 0 : 2 * num_kv_pairs : 2]  # key j sits at position 2j
    for r, c in zip(rows, cols, strict=True):
        match = np.nonzero(keys[r] == inputs[r, c])[0]
        if len(match) != 1:
            raise ValueError(f"query token {inputs[r, c]} at row {r}, position {c} is not a unique key")
        distances[r, c] = c - 2 * int(match[0])
    return distances


def lr_at(step: int, recipe: MQARRecipe) -> float:
    """The learning rate of `step`: the trainer's schedule, linear warm-up to recipe.lr then cosine decay to
    `MIN_LR_RATIO` of it."""
    return recipe.lr * warmup_cosine(recipe.warmup, recipe.steps, MIN_LR_RATIO)(step)


def train_mqar(
    model: nn.Module,
    recipe: MQARRecipe,
    log_every: int = 0,
    batches: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    progress_desc: str | None = None,
) -> list[float]:
    """Train `model` (CPU or its own device) on MQAR in place; returns the loss of every step.
    ``batches(step) -> (inputs, targets)`` replaces the MQAR batches with another task's (same optimiser,
    schedule and answer-only loss); ``progress_desc`` shows a progress bar with that title."""
    device = next(model.parameters()).device
    optimizer = build_optimizer("adamw", model, recipe.lr, recipe.weight_decay, BETAS)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(recipe.warmup, recipe.steps, MIN_LR_RATIO))
    model.train()
    losses = []
    start = time.perf_counter()
    steps = progress_bar(range(recipe.steps), desc=progress_desc, unit="step") if progress_desc else range(recipe.steps)
    for step in steps:
        if batches is None:
            inputs, targets = mqar_batch(recipe, TRAIN_STREAM, step, recipe.batch_size)
        else:
            inputs, targets = batches(step)
        logits = logits_of(model(torch.from_numpy(inputs).to(device)))
        loss = F.cross_entropy(
            logits.flatten(0, 1), torch.from_numpy(targets).to(device).flatten(), ignore_index=IGNORE
        )
        loss.backward()
        clip_gradients(model, GRAD_CLIP)
        apply_update(optimizer, scheduler)
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            recent = float(np.mean(losses[-log_every:]))
            print(f"  step {step + 1:5d}  loss {recent:.3f}  {time.perf_counter() - start:6.1f}s", flush=True)
    return losses


@torch.no_grad()
def mqar_accuracy_by_distance(
    model: nn.Module, recipe: MQARRecipe, reach: int, batch_size: int = 64
) -> dict[str, float | int]:
    """Per-answer-token accuracy on held-out MQAR examples, split at key distance `reach`:
    {"near", "beyond", "all"} accuracies and {"near_n", "beyond_n"} query counts."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = {"near": 0, "beyond": 0}
    counts = {"near": 0, "beyond": 0}
    try:
        for start in range(0, recipe.eval_examples, batch_size):
            rows = min(batch_size, recipe.eval_examples - start)
            inputs, targets = mqar_batch(recipe, EVAL_STREAM, start, rows)
            distances = key_distances(inputs, targets, recipe.num_kv_pairs)
            predicted = logits_of(model(torch.from_numpy(inputs).to(device))).argmax(-1).cpu().numpy()
            correct = predicted == targets
            for name, mask in (("near", (distances >= 0) & (distances <= reach)), ("beyond", distances > reach)):
                hits[name] += int(correct[mask].sum())
                counts[name] += int(mask.sum())
    finally:
        model.train(was_training)
    total = counts["near"] + counts["beyond"]
    return {
        "near": hits["near"] / max(counts["near"], 1),
        "beyond": hits["beyond"] / max(counts["beyond"], 1),
        "all": (hits["near"] + hits["beyond"]) / max(total, 1),
        "near_n": counts["near"],
        "beyond_n": counts["beyond"],
    }


def chance_accuracy(recipe: MQARRecipe) -> float:
    """Accuracy of guessing a value uniformly: values are drawn from the upper half of the vocabulary."""
    return 1.0 / (recipe.vocab_size - recipe.vocab_size // 2)


def compare_recall_past_window(
    archs: tuple[str, ...] = ("deltanet", "swa_transformer"),
    recipe: MQARRecipe | None = None,
    dim: int = 64,
    depth: int = 2,
    heads: int = 2,
    window: int = 16,
    chunk_size: int = 32,
    log_every: int = 0,
) -> dict[str, dict[str, float | int]]:
    """Train each architecture (its ``-tiny`` preset narrowed to dim/depth/heads, the recipe's vocabulary)
    from torch seed ``recipe.seed`` on the same MQAR batches, then score held-out queries near and beyond
    the sliding-window stack's reach ``depth * window``. Returns {arch: accuracies, counts, parameters,
    train seconds, final loss}."""
    from ttmem.models import build_model, count_parameters

    recipe = recipe or MQARRecipe()
    reach = depth * window
    results: dict[str, dict[str, float | int]] = {}
    for arch in archs:
        torch.manual_seed(recipe.seed)
        model = build_model(
            f"{arch}-tiny",
            vocab_size=recipe.vocab_size,
            dim=dim,
            depth=depth,
            heads=heads,
            window=window,
            chunk_size=chunk_size,
        )
        if log_every:
            print(f"{arch}: {count_parameters(model):,} parameters", flush=True)
        start = time.perf_counter()
        losses = train_mqar(model, recipe, log_every)
        seconds = time.perf_counter() - start
        scores = mqar_accuracy_by_distance(model, recipe, reach)
        results[arch] = {
            **scores,
            "reach": reach,
            "parameters": count_parameters(model),
            "train_seconds": seconds,
            "final_loss": float(np.mean(losses[-20:])),
        }
    return results
