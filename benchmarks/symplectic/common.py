"""Shared pieces of the symplectic-gating / memory-paging benchmarks: data, models, training loops, reports.

Protocols follow the titans-pytorch symplectic fork's benchmarks with three fixes: every result has a control
with the same number of internal memory heads as the paged models ("same_heads": P · heads plain heads), the
two interference tasks differ (fixed, different directions and periods), and every figure is a spread over
seeds. Each phase trains a fresh model (the fork reused one model across phases).

The model is an auto-associative memory: RMS-normalised input -> ``NeuralMemory`` -> output, loss
MSE(output, input), Adam(1e-3), one forward per step with no memory state carried between steps (each step
starts from the learned initial memory), as in the fork, unless ``train_steps(carry_state=True)`` (the fork's
``--carry-state``). ``final_loss`` is the mean of the last 10 step losses.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ttmem.layers import NeuralMemory

# -- data --------------------------------------------------------------------------------------------------


def spiral(batch: int, length: int, dim: int, gen: torch.Generator) -> Tensor:
    """dims 0, 1 = cos t, sin t; dim 2 = t / max t; the rest 0.1 · noise; t in [0, 4π]."""
    t = torch.linspace(0, 4 * math.pi, length)
    x = 0.1 * torch.randn(batch, length, dim, generator=gen)
    x[..., 0], x[..., 1], x[..., 2] = torch.cos(t), torch.sin(t), t / t.max()
    return x


def helix_drift(batch: int, length: int, dim: int, gen: torch.Generator) -> Tensor:
    """Spiral over [0, 6π] with a linear drift in dim 3 and 0.1 · noise beyond."""
    t = torch.linspace(0, 6 * math.pi, length)
    x = 0.1 * torch.randn(batch, length, dim, generator=gen)
    x[..., 0], x[..., 1], x[..., 2], x[..., 3] = torch.cos(t), torch.sin(t), t / t.max(), torch.linspace(0, 1, length)
    return x


def long_horizon_pair(batch: int, length: int, dim: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(clean, perturbed): a slow spiral with 0.05 · noise; the middle third of the perturbed copy is phase-shifted
    by 0.8 and scaled by 1.2."""
    t = torch.linspace(0, 12 * math.pi, length)
    clean = 0.05 * torch.randn(batch, length, dim, generator=gen)
    clean[..., 0], clean[..., 1], clean[..., 2] = torch.cos(t), torch.sin(t), t / t.max()
    pert = clean.clone()
    mid = slice(length // 3, 2 * length // 3)
    shifted = t[mid] + 0.8
    pert[:, mid, 0], pert[:, mid, 1] = 1.2 * torch.cos(shifted), 1.2 * torch.sin(shifted)
    pert[:, mid, 2] = (shifted / t.max()).clamp(max=1.0)
    return clean, pert


def interference_task(task: str, batch: int, length: int, dim: int, gen: torch.Generator) -> Tensor:
    """Two tasks that differ in distribution: a shared base spiral plus a fixed direction added at a task's
    period, A: +2 e_A every 8th position, B: +2 e_B every 5th position, e_A ⟂ e_B fixed for all draws."""
    t = torch.linspace(0, 6 * math.pi, length)
    x = 0.04 * torch.randn(batch, length, dim, generator=gen)
    x[..., 0], x[..., 1], x[..., 2] = torch.cos(t), torch.sin(t), torch.sin(0.5 * t)
    direction = torch.zeros(dim)
    if task == "A":
        direction[3:dim // 2] = 1.0
        period = 8
    else:
        direction[dim // 2:] = 1.0
        period = 5
    x[:, ::period] += 2.0 * direction / direction.norm()
    return x


# -- models ------------------------------------------------------------------------------------------------


class AutoAssociative(nn.Module):
    """RMS-normalised input -> NeuralMemory -> output (the memory reconstructs what it is written)."""

    def __init__(self, dim: int, heads: int, chunk: int, options: dict | None):
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.memory = NeuralMemory(dim, heads=heads, chunk_size=chunk, dim_head=dim, symplectic=options)

    def forward(self, x: Tensor) -> Tensor:
        return self.memory(self.norm(x))[0]

    def stream(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """The output and the memory state after x, continuing ``state`` (None: the learned initial memory)."""
        return self.memory(self.norm(x), state)

    def switches(self) -> int:
        paging = self.memory.symplectic
        return int(paging.page_switch_events) if paging is not None and paging.pages > 1 else 0


@dataclass
class Variant:
    """One model setting: heads per page and the layer's ``symplectic`` options."""

    heads: int = 1
    options: dict[str, Any] | None = None
    description: str = ""

    def internal_heads(self) -> int:
        return self.heads * (self.options or {}).get("num_pages", 1)


PHASE_QUORUM = dict(gated=True, diag=True, gate_mode="soft", phase_mix=0.5, quorum_mix=0.55, quorum_window=5,
                    quorum_threshold=0.25, quorum_temperature=0.1)


def paged(dim: int, **extra: Any) -> dict[str, Any]:
    """Two pages switched by the twist score, threshold 1.0 × its noise level."""
    return dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=1.0,
                page_threshold_units="noise", **extra)


def phase_pairs(dim: int) -> int:
    return max(1, dim // 8)


# -- training ------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """Sizes of one protocol run (recorded as the report's ``config``; the guard compares only equal ones)."""

    dim: int = 32
    seq_len: int = 64
    batch: int = 4
    chunk: int = 8
    steps: int = 30
    seeds: tuple[int, ...] = (0, 1, 2)
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "seq_len": self.seq_len, "batch": self.batch, "chunk": self.chunk,
                "steps": self.steps, "seeds": list(self.seeds), **self.extra}


def build(variant: Variant, setup: Setup, seed: int) -> AutoAssociative:
    torch.manual_seed(seed)
    return AutoAssociative(setup.dim, variant.heads, setup.chunk, variant.options)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[int], Tensor],
                steps: int, carry_state: bool = False) -> tuple[list[float], float]:
    """``steps`` Adam steps on MSE(model(x), x); (losses, ms per step). ``carry_state``: each step's forward
    continues the memory state (weights, active page, running statistics, switch history) the previous step
    ended with, cut from the graph (the fork's ``--carry-state``); otherwise every step starts from the learned
    initial memory and page 0."""
    losses = []
    state = None
    start = time.perf_counter()
    for step in range(steps):
        x = batches(step)
        if carry_state:
            y, state = model.stream(x, state)
            state = state.detach()
        else:
            y = model(x)
        loss = (y - x).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, 1000 * (time.perf_counter() - start) / max(steps, 1)


def tail(losses: list[float], n: int = 10) -> float:
    return statistics.fmean(losses[-n:])


@torch.no_grad()
def eval_mse(model: nn.Module, x: Tensor) -> float:
    return (model(x) - x).pow(2).mean().item()


@torch.no_grad()
def phase_error(model: nn.Module, x: Tensor) -> float:
    """Mean |wrapped angle difference| of the (dim 0, dim 1) plane between output and input."""
    y = model(x)
    diff = torch.atan2(y[..., 1], y[..., 0]) - torch.atan2(x[..., 1], x[..., 0])
    return torch.atan2(diff.sin(), diff.cos()).abs().mean().item()


def time_models(models: dict[str, nn.Module], x: Tensor, rounds: int = 7) -> dict[str, dict[str, float]]:
    """Median forward (no grad) and forward + backward times in ms per model, measured round-robin (one call of
    each model per round) so that load changes on a shared machine hit every model alike."""
    def forward(model: nn.Module) -> None:
        with torch.no_grad():
            model(x)

    def train(model: nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        (model(x) - x).pow(2).mean().backward()

    times: dict[str, dict[str, list[float]]] = {n: {"fwd_ms": [], "train_ms": []} for n in models}
    for r in range(rounds + 1):  # round 0 warms up
        for name, model in models.items():
            for key, fn in (("fwd_ms", forward), ("train_ms", train)):
                start = time.perf_counter()
                fn(model)
                if r:
                    times[name][key].append(1000 * (time.perf_counter() - start))
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


# -- transfer phases (long-horizon perturb-and-recover, interference A then B) -------------------------------


def run_long_horizon(variant: Variant, setup: Setup, seed: int) -> dict[str, float]:
    warm, pert, rec = setup.extra["long_steps"]
    model = build(variant, setup, seed)
    clean, perturbed = long_horizon_pair(setup.batch, setup.extra["long_len"], setup.dim,
                                         torch.Generator().manual_seed(2000 + seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, lambda _: clean, warm)
    pre, phase_pre = eval_mse(model, clean), phase_error(model, clean)
    train_steps(model, optimizer, lambda _: perturbed, pert)
    perturb = eval_mse(model, clean)
    train_steps(model, optimizer, lambda _: clean, rec)
    post, phase_post = eval_mse(model, clean), phase_error(model, clean)
    return {"clean_mse_pre": pre, "perturb_mse": perturb, "clean_mse_post": post, "phase_err_pre": phase_pre,
            "phase_err_post": phase_post, "mse_recovery_gain": pre - post,
            "phase_recovery_gain": phase_pre - phase_post}


def run_interference(variant: Variant, setup: Setup, seed: int) -> dict[str, float]:
    """``setup.steps`` steps on task A, then as many on B; held-out MSE on A and B."""
    steps = setup.steps
    model = build(variant, setup, seed)
    gen = torch.Generator().manual_seed(3000 + seed)

    def batches(task: str):
        return lambda _: interference_task(task, setup.batch, setup.seq_len, setup.dim, gen)

    held = {t: interference_task(t, 4 * setup.batch, setup.seq_len, setup.dim,
                                 torch.Generator().manual_seed(9000 + seed)) for t in "AB"}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses_a, ms_a = train_steps(model, optimizer, batches("A"), steps)
    pre_a = eval_mse(model, held["A"])
    losses_b, ms_b = train_steps(model, optimizer, batches("B"), steps)
    post_a, post_b = eval_mse(model, held["A"]), eval_mse(model, held["B"])
    return {"pre_a_loss": pre_a, "post_a_loss": post_a, "post_b_loss": post_b, "forgetting_delta": post_a - pre_a,
            "train_a_tail": tail(losses_a), "train_b_tail": tail(losses_b), "step_ms": (ms_a + ms_b) / 2,
            "switch_rate": model.switches() / (2 * steps * setup.batch * (setup.seq_len // setup.chunk))}


def transfer_score(long_horizon: dict[str, float], interference: dict[str, float]) -> float:
    """The fork's transfer score without its latency term: clean MSE after recovery + 0.5 · phase error after
    recovery + task-A MSE after training on B (lower is better)."""
    return long_horizon["clean_mse_post"] + 0.5 * long_horizon["phase_err_post"] + interference["post_a_loss"]


# -- reports -------------------------------------------------------------------------------------------------


def spread(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}


def collect(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """[{metric: value or nested}] per seed -> {metric: spread} (nested dicts kept)."""
    first = per_seed[0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = collect([run[key] for run in per_seed])
        else:
            out[key] = spread([float(run[key]) for run in per_seed])
    return out


def device_info() -> dict[str, Any]:
    return {"device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


def write_report(protocol: str, tag: str, setup: Setup, metrics: dict[str, Any], checks: list[dict[str, str]],
                 out: Path, csv_path: Path | None, table: list[str]) -> dict[str, Any]:
    """JSON with tag / device / config / metrics / checks; optional CSV row of the flattened means."""
    report = {"protocol": protocol, "tag": tag, "timestamp_utc": datetime.now(timezone.utc).isoformat(),
              "device": device_info(), "config": setup.config(), "metrics": metrics, "checks": checks}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if csv_path is not None:
        row = {"protocol": protocol, "tag": tag, **flatten_means(metrics)}
        new = not csv_path.exists()
        with csv_path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
    print("\n".join(table))
    return report


def flatten_means(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and "mean" in value and "values" in value:
            out[prefix + key] = value["mean"]
        elif isinstance(value, dict):
            out.update(flatten_means(value, f"{prefix}{key}."))
    return out


def fmt(cell: dict[str, Any], digits: int = 4) -> str:
    """mean [min, max] in a compact form."""
    return f"{cell['mean']:.{digits}g} [{cell['min']:.{digits}g}, {cell['max']:.{digits}g}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
