"""Recall accuracy on the synthetic tasks: the needle across lengths and depths, MQAR, copying.

Design: accuracy is scored in one teacher-forced forward pass. An example counts as correct when the
argmax prediction is right at every answer position; for a greedy decoder this is exactly "the
generated answer equals the reference", without a decoding loop. Examples are seeded by
(seed, cell), so two models evaluated with the same seed see the same examples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ttmem.data import IGNORE, SyntheticTask, Tokenizer, needle_example, row_rng
from ttmem.train.objective import logits_of, model_device


@torch.no_grad()
def answer_accuracy(model: nn.Module, inputs: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(exact-match accuracy per example, accuracy per answer token) for inputs/targets [N, T]."""
    was_training = model.training
    model.eval()
    try:
        device = model_device(model)
        logits = logits_of(model(torch.from_numpy(inputs).long().to(device)))
    finally:
        model.train(was_training)
    tgt = torch.from_numpy(targets).long().to(logits.device)
    mask = tgt != IGNORE
    hit = (logits.argmax(-1) == tgt) & mask
    exact = int((hit.sum(1) == mask.sum(1)).sum())
    return exact / len(tgt), int(hit.sum()) / max(int(mask.sum()), 1)


def needle_accuracy(
    model: nn.Module,
    seq_len: int,
    depth: float,
    samples: int = 4,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    template: str = "compact",
) -> float:
    """Fraction of `samples` needle examples of `seq_len` tokens, needle at `depth`, answered exactly."""
    cell = int(round(depth * 1000))
    examples = [
        needle_example(row_rng(seed, 10, seq_len, cell * 1000 + i), seq_len, depth, tokenizer, template)
        for i in range(samples)
    ]
    inputs = np.stack([e.inputs for e in examples])
    targets = np.stack([e.targets for e in examples])
    return answer_accuracy(model, inputs, targets)[0]


def needle_grid(
    model: nn.Module,
    lengths: list[int],
    depths: list[float] | np.ndarray,
    samples: int = 4,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    template: str = "compact",
    progress: bool = False,
) -> np.ndarray:
    """Needle accuracy [len(depths), len(lengths)]."""
    grid = np.zeros((len(depths), len(lengths)))
    cells = [(i, j) for j in range(len(lengths)) for i in range(len(depths))]
    if progress:
        from ttmem.progress import progress_bar

        cells = progress_bar(cells, desc="needle eval", unit="cell")
    for i, j in cells:
        grid[i, j] = needle_accuracy(model, lengths[j], float(depths[i]), samples, seed, tokenizer, template)
    return grid


def task_accuracy(
    model: nn.Module, task: SyntheticTask, samples: int = 32, seed: int = 0, batch_size: int = 16
) -> dict[str, float]:
    """{"exact": per-example accuracy, "token": per-answer-token accuracy} of any synthetic task."""
    rows = [task.example(row_rng(seed, 11, task.seq_len, i)) for i in range(samples)]
    exact = token = 0.0
    for start in range(0, samples, batch_size):
        chunk = rows[start : start + batch_size]
        e, t = answer_accuracy(model, np.stack([r[0] for r in chunk]), np.stack([r[1] for r in chunk]))
        exact, token = exact + e * len(chunk), token + t * len(chunk)
    return {"exact": exact / samples, "token": token / samples}


def mqar_accuracy(
    model: nn.Module, seq_len: int, num_kv_pairs: int, vocab_size: int = 256, samples: int = 32, seed: int = 0
) -> float:
    """Fraction of MQAR queries answered correctly (Zoology's metric: per answer token)."""
    task = SyntheticTask("mqar", seq_len, vocab_size, num_kv_pairs=num_kv_pairs)
    return task_accuracy(model, task, samples, seed)["token"]


def save_heatmap(
    grid: np.ndarray,
    lengths: list[int],
    depths: list[float] | np.ndarray,
    path: str | Path,
    title: str = "needle recall",
) -> Path:
    """A depth x length accuracy heatmap as PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.28 * len(depths)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
