"""Sampling text from any causal language model.

Design: a model with its own `generate` (ttmem.models, which streams its memory state) is used as
is; any other module is sampled by re-running the whole prefix each step, which is slow but needs
nothing from the model beyond forward(input_ids) -> logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ttmem.train.objective import logits_of, model_device


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits [B, V] with everything outside the top-k / nucleus top-p set to -inf."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """prompt [B, T] -> [B, T + max_new_tokens]; temperature 0 = greedy."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not 0 <= temperature < math.inf:  # also refuses NaN, which every comparison lets through
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if seed is not None:
        torch.manual_seed(seed)
    model.eval()
    prompt = prompt.to(model_device(model))
    if hasattr(model, "generate") and temperature > 0:
        return model.generate(prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    out = prompt
    for _ in range(max_new_tokens):
        logits = logits_of(model(out))[:, -1].float()
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1)
        out = torch.cat([out, nxt], dim=1)
    return out
