"""Demonstration that the memory learns while it reads: no outer training, only the inner loop.

N random key → value pairs are written once, token by token, into a memory; each key is then read back and
counted as recalled when the nearest stored value to the memory's answer is its own value. The rules differ in
how they fail past the memory's width: the delta rule with step 1 overwrites, so it keeps the most recent pairs
exactly and loses the oldest; Hebbian linear attention superposes every pair and degrades through interference;
the Titans MLP memory takes a few passes of chunked mini-batch GD with momentum.

Run: ``ttmem demo`` (seconds on a CPU).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .memory import memorize

SETTINGS = {  # rule: (step size, chunk size, passes over the pairs)
    "delta": (1.0, 64, 1),
    "linear_attention": (1.0, 64, 1),
    "titans": (0.5, 16, 4),
}
SIZES = (16, 32, 64, 128, 256)  # numbers of pairs written


def recall(rule: str, pairs: int, dim: int, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(1, pairs, 1, dim, generator=gen), dim=-1)
    values = F.normalize(torch.randn(1, pairs, 1, dim, generator=gen), dim=-1)
    lr, chunk, passes = SETTINGS[rule]
    k = keys.repeat(1, passes, 1, 1)
    v = values.repeat(1, passes, 1, 1)
    gates = {"lr": torch.full(k.shape[:3], lr)}
    if rule == "titans":
        gates["momentum"] = torch.full(k.shape[:3], 0.5)
    _, state = memorize(k, k, v, **gates, rule=rule, chunk_size=chunk)
    read, _ = memorize(keys, keys, values, torch.zeros(keys.shape[:3]), rule=rule, chunk_size=chunk,
                       state=state, **({"momentum": torch.zeros(keys.shape[:3])} if rule == "titans" else {}))
    nearest = (read[0, :, 0] @ values[0, :, 0].T).argmax(-1)
    return float((nearest == torch.arange(pairs)).float().mean())


def recall_table(dim: int = 64, sizes: Sequence[int] = SIZES) -> Iterator[str]:
    """The demo's table line by line, each rule's line as soon as it is measured (with its seconds)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    yield f"recall of N key-value pairs written once into a memory of width {dim} (no training)"
    yield f"{'rule':<18}" + "".join(f"N={n:<7}" for n in sizes) + "seconds"
    for rule in SETTINGS:
        start = time.perf_counter()
        row = [recall(rule, n, dim) for n in sizes]
        yield f"{rule:<18}" + "".join(f"{r:<9.2f}" for r in row) + f"{time.perf_counter() - start:.1f}"
