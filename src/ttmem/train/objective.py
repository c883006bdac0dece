"""The language-modelling objective: next-token loss, and its validation measures (loss, perplexity, bits
per byte over a token array). Training minimises it and reports it on the validation split; evaluation
(`ttmem.eval`) reports the same numbers, so it lives below both.

Design: the validation text is cut into consecutive, non-overlapping windows of `seq_len` predicted
tokens (each token is predicted exactly once, with the window's earlier tokens as context), so the
numbers are comparable between models with the same `seq_len`. Bits per byte divides the total
negative log-likelihood in bits by the number of raw bytes those tokens encode, which makes it
comparable across tokenisers. Sums are returned separately so that several processes can add them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def logits_of(output: Any) -> torch.Tensor:
    """The logits [B, T, V] of a model output (a tensor, an object with `.logits`, or a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"model output must be logits or have .logits, got {type(output).__name__}")


def token_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of next-token negative log-likelihoods (nats) over targets != -100; logits [B, T, V]."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def lm_nll_sums(
    model: nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> tuple[float, int]:
    """(sum of NLL in nats, number of predicted tokens) over this process's share of the windows."""
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
    usable = len(tokens) - 1 if max_tokens is None else min(len(tokens) - 1, max_tokens)
    windows = usable // seq_len
    if windows < 1:
        raise ValueError(f"evaluation needs at least seq_len + 1 = {seq_len + 1} tokens, got {len(tokens)}")
    device = model_device(model)
    mine = list(range(rank, windows, world))
    nll, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(mine), batch_size):
            starts = [w * seq_len for w in mine[i : i + batch_size]]
            rows = np.stack([tokens[s : s + seq_len + 1].astype(np.int64) for s in starts])
            batch = torch.from_numpy(rows).to(device)
            logits = logits_of(model(batch[:, :-1]))
            nll += float(token_nll_sum(logits, batch[:, 1:]).double())
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return nll, count


def summarize_nll(nll: float, count: int, bytes_per_token: float = 1.0) -> dict[str, float]:
    """{"loss" (nats / token), "ppl", "bpb" (bits / byte), "tokens"} from summed NLL."""
    loss = nll / max(count, 1)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 700.0)),
        "bpb": loss / math.log(2) / bytes_per_token,
        "tokens": count,
    }


def evaluate_lm(
    model: nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    bytes_per_token: float = 1.0,
) -> dict[str, float]:
    """Loss, perplexity and bits per byte of `model` on `tokens` (see module docstring)."""
    return summarize_nll(*lm_nll_sums(model, tokens, seq_len, batch_size, max_tokens), bytes_per_token)
