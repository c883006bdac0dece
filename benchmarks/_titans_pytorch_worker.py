"""Worker for ``layer_vs_titans_pytorch.py``: builds titans-pytorch's ``NeuralMemory`` and measures
one configuration with the shared harness. Runs only inside the titans-pytorch environment.

The arguments mirror ttmem's titans preset as far as titans-pytorch's constructor allows: a
two-layer MLP memory with expansion 4 (wrapped, as titans-pytorch does by default, in a residual
+ LayerNorm), momentum of order 1, learned per-token step size in [0, 1] and learned decay,
per-head learned initial weights, dim_head = dim / heads, q/k normalisation and an output norm.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from layer_vs_titans_pytorch import run_worker, worker_arguments  # noqa: E402

TITANS_PYTORCH_CONFIG = {
    "chunk_size": 64, "heads": "H", "dim_head": "dim // H", "momentum": True, "momentum_order": 1,
    "default_model_kwargs": {"depth": 2, "expansion_factor": 4.0}, "mem_model_norm_add_residual": True,
    "per_head_learned_parameters": True, "qk_rmsnorm": True, "post_rmsnorm": True, "activation": "SiLU",
    "default_step_transform_max_lr": 1.0,
}
SEMANTIC_DIFFERENCES = [
    "titans-pytorch takes every chunk's gradient at the weights the call starts with; ttmem takes each chunk's "
    "gradients at that chunk's start weights (Titans Eq. 16-18), so its chunks depend on each other and run "
    "in sequence.",
    "titans-pytorch reads per chunk: every query of a chunk reads one weight snapshot; ttmem reads after each "
    "token's write (dual form).",
    "titans-pytorch gates momentum and decay per chunk (from the chunk's mean input); ttmem gates step size, "
    "momentum and forgetting per token. Both take the step size per token.",
    "titans-pytorch's inner loss is the mean squared error over the feature axis, ttmem's 1/2 ||M(k) - v||^2 "
    "(a constant factor on the gradient); its memory LayerNorm has a learned gain, ttmem's none.",
    "titans-pytorch has no short convolution and RMS-normalises q and k; ttmem's layer has a causal depthwise "
    "convolution (kernel 4) with SiLU and l2-normalises q and k. Its output gate exists only with several "
    "heads; ttmem always gates the output.",
]


def titans_pytorch_memory_kwargs(heads: int, dim_head: int) -> dict:
    """titans-pytorch ``NeuralMemory`` keyword arguments (besides dim and chunk_size) matching ttmem's layer."""
    return dict(
        heads=heads,
        dim_head=dim_head,
        momentum=True,
        momentum_order=1,
        default_model_kwargs={"depth": 2, "expansion_factor": 4.0},
        mem_model_norm_add_residual=True,
        per_head_learned_parameters=True,
        qk_rmsnorm=True,
        post_rmsnorm=True,
        activation=torch.nn.SiLU(),
        default_step_transform_max_lr=1.0,
    )


def build_titans_pytorch(dim: int, heads: int, chunk: int) -> tuple[torch.nn.Module, object]:
    """titans-pytorch 0.5.5 ``NeuralMemory`` matching ttmem's layer; returns (module, forward)."""
    from titans_pytorch import NeuralMemory

    memory = NeuralMemory(dim, chunk_size=chunk, **titans_pytorch_memory_kwargs(heads, dim // heads))
    return memory, lambda x: memory(x)[0]


if __name__ == "__main__":
    run_worker(worker_arguments(), build_titans_pytorch, extra=False)
