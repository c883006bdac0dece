"""Throughput of a model: training steps (forward + backward) and inference forwards per second.

Design: a few warm-up iterations are excluded (allocator, lazy init, compilation), GPU timings are
bracketed by synchronisation, and the result is tokens per second so models with different batch
shapes can be compared.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ttmem.train.objective import logits_of, model_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(
    model: nn.Module,
    batch_size: int = 8,
    seq_len: int = 256,
    iters: int = 5,
    warmup: int = 2,
    vocab_size: int = 256,
) -> dict[str, float]:
    """{"train_tokens_per_s", "infer_tokens_per_s", "peak_mem_mb" (CUDA only, else 0)} on random ids."""
    if min(batch_size, seq_len, iters) < 1 or warmup < 0:
        raise ValueError("batch_size, seq_len and iters must be >= 1 and warmup >= 0")
    device = model_device(model)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = {}
    model.train()
    for phase in ("train", "infer"):
        for i in range(warmup + iters):
            if i == warmup:
                _sync(device)
                start = time.perf_counter()
            if phase == "train":
                logits_of(model(ids)).float().logsumexp(-1).mean().backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    logits_of(model(ids))
        _sync(device)
        out[f"{phase}_tokens_per_s"] = iters * batch_size * seq_len / (time.perf_counter() - start)
        model.eval()
    out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return out
