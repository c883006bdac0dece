"""Batches as a pure function of (seed, step, row): the data order needs no state.

Design: row r of optimizer step s is drawn from its own RNG seeded with (seed, stream, s, r). A run
resumed at step s therefore sees exactly the batches the uninterrupted run saw, and with several
processes each one builds only its own rows of the same global batch, so N processes see the same
data as one process with the same global batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ttmem.data.synthetic import SyntheticTask

IGNORE = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] int64, IGNORE where no loss

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.targets.to(device))

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def row_rng(seed: int, stream: int, step: int, row: int) -> np.random.Generator:
    """The RNG of one batch row (all arguments non-negative ints)."""
    return np.random.default_rng([seed, stream, step, row])


def stack_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> Batch:
    inputs = torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.int64))
    targets = torch.from_numpy(np.stack([r[1] for r in rows]).astype(np.int64))
    return Batch(inputs, targets)


class RowSource(Protocol):
    seq_len: int

    def row(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class CorpusWindows:
    """Random windows of `seq_len + 1` tokens of a flat token array (next-token targets everywhere)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int = 0, stream: int = 0) -> None:
        if len(tokens) < seq_len + 2:
            raise ValueError(f"corpus split has {len(tokens)} tokens, fewer than seq_len + 2 = {seq_len + 2}")
        self.tokens, self.seq_len, self.seed, self.stream = tokens, seq_len, seed, stream

    def row(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        start = int(row_rng(self.seed, self.stream, step, index).integers(0, len(self.tokens) - self.seq_len))
        window = self.tokens[start : start + self.seq_len + 1].astype(np.int64)
        return window[:-1], window[1:]


class TaskRows:
    """Rows of a synthetic task."""

    def __init__(self, task: SyntheticTask, seed: int = 0, stream: int = 2) -> None:
        self.task, self.seq_len, self.seed, self.stream = task, task.seq_len, seed, stream

    def row(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.task.example(row_rng(self.seed, self.stream, step, index))


class MixedRows:
    """Each row comes from `aux` with probability `aux_fraction`, else from `primary`."""

    def __init__(self, primary: RowSource, aux: RowSource, aux_fraction: float, seed: int = 0) -> None:
        if primary.seq_len != aux.seq_len:
            raise ValueError(f"mixed sources need one seq_len, got {primary.seq_len} and {aux.seq_len}")
        if not 0.0 <= aux_fraction <= 1.0:
            raise ValueError(f"aux_fraction must be in [0, 1], got {aux_fraction}")
        self.primary, self.aux, self.aux_fraction, self.seed = primary, aux, aux_fraction, seed
        self.seq_len = primary.seq_len

    def row(self, step: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        use_aux = row_rng(self.seed, 1, step, index).random() < self.aux_fraction
        return (self.aux if use_aux else self.primary).row(step, index)


def make_batch(source: RowSource, step: int, rows: Sequence[int]) -> Batch:
    """The given rows of step `step`'s global batch: input_ids, targets [len(rows), seq_len]."""
    if len(rows) == 0:
        raise ValueError("a batch needs at least one row")
    return stack_rows([source.row(step, int(r)) for r in rows])
