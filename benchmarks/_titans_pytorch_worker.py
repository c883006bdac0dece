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


def build_titans_pytorch(dim: int, heads: int, chunk: int) -> tuple[torch.nn.Module, object]:
    """titans-pytorch 0.5.5 ``NeuralMemory`` matching ttmem's layer; returns (module, forward)."""
    from titans_pytorch import NeuralMemory

    memory = NeuralMemory(
        dim,
        chunk_size=chunk,
        heads=heads,
        dim_head=dim // heads,
        momentum=True,
        momentum_order=1,
        default_model_kwargs={"depth": 2, "expansion_factor": 4.0},
        per_head_learned_parameters=True,
        qk_rmsnorm=True,
        post_rmsnorm=True,
        activation=torch.nn.SiLU(),
        default_step_transform_max_lr=1.0,
    )
    return memory, lambda x: memory(x)[0]


if __name__ == "__main__":
    run_worker(worker_arguments(), build_titans_pytorch, extra=False)
