"""Small stand-alone language models used by the training, evaluation and CLI tests.

They are built from the spec "tests/helpers/train_models.py:FACTORY", the way a user plugs in a model of
their own, so the trainer is exercised with modules that are not ttmem.models.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyCausalLM(nn.Module):
    """Embedding, one causal attention block, output head; forward(ids [B, T]) -> logits [B, T, V]."""

    def __init__(self, vocab_size: int = 256, dim: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1024, dim))
        # No projection biases: the key bias has an exactly-zero gradient (softmax ignores it), which
        # Adam turns into lr-sized steps driven by rounding noise.
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True, bias=False)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos[:t]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        h = self.norm(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=mask, need_weights=False)[0])
        x = x + self.mlp(self.norm(x))
        return self.head(self.norm(x))


class NaNAfter(TinyCausalLM):
    """Returns NaN logits from its `nan_after`-th training forward call on."""

    def __init__(self, vocab_size: int = 256, nan_after: int = 3) -> None:
        super().__init__(vocab_size, dim=16)
        self.nan_after, self.calls = nan_after, 0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = super().forward(input_ids)
        if self.training:
            self.calls += 1
            if self.calls >= self.nan_after:
                return logits * float("nan")
        return logits


def tiny_lm(vocab_size: int = 256, dim: int = 32, dropout: float = 0.0) -> TinyCausalLM:
    return TinyCausalLM(vocab_size, dim, dropout)


def nan_lm(vocab_size: int = 256, nan_after: int = 3) -> NaNAfter:
    return NaNAfter(vocab_size, nan_after)
