"""The codebook sweep, the codebook transfer and the manifold-paging transfer protocols (``run.py`` runs them).

- ``codebook_sweep``: the fork's grid of codebook blends (mix κ × codebook size K × top-k) on the phase-quorum
  gate with 2 manifold-keyed pages, trained on multi-motif data (two rotating motifs alternating in short
  segments), scored on a held-out draw by 0.7 · MSE at motif boundaries + 0.3 · MSE overall. κ = 0 (the
  codebook off) is one trial rather than the fork's nine copies of it. Beside the grid: the 2-head control
  and the 1-head baseline.
- ``codebook_transfer``: the fork's four variants (baseline, symplectic paging, phase-quorum paging, the
  codebook "champion" κ 0.5, K 16, τ 0.1, no top-k) plus the 2-head control, each on long-horizon
  perturb-and-recover and on interference (A then B); the transfer score of ``common.transfer_score``; the
  champion against each of the others as percent improvement, per seed.
- ``manifold_transfer``: threshold paging (sequential) against manifold-keyed paging, both on the phase-quorum
  gate, plus the 2-head control and the 1-head baseline, on the same transfer phases.

Differences from the fork: thresholds are 1.0 in noise units (``common.paged``; the fork's raw 0.5 and 0.2 were
set for width 128 and rarely or always fire at other widths), the score has no latency term (step times of a
shared machine are noise of the size of the losses), every figure is a spread over seeds, and the percent
comparisons pair runs of the same seed.
"""

from __future__ import annotations

import itertools
import math
import sys
from typing import Any

import torch
from common import (
    PHASE_QUORUM,
    Setup,
    Variant,
    build,
    collect,
    fmt,
    markdown_table,
    paged,
    phase_pairs,
    run_interference,
    run_long_horizon,
    tail,
    train_steps,
    transfer_score,
)
from torch import Tensor

# -- codebook sweep ----------------------------------------------------------------------------------------


def multi_motif(batch: int, length: int, dim: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(x, boundary mask [length]): motif A = (cos t, sin t) and motif B = (cos(2.7 t + 0.4), sin(2.7 t + 0.4))
    alternate in segments of max(4, length // 16) tokens; dims 0, 1 = 0.85 · active + 0.15 · other motif, dims 2, 3
    = one-hot of the active motif, the rest 0.05 · noise; t in [0, 8π]. The mask marks the positions where the
    motif changes, dilated by one on each side."""
    t = torch.linspace(0, 8 * math.pi, length)
    motif = (torch.arange(length) // max(4, length // 16)) % 2
    a = torch.stack([torch.cos(t), torch.sin(t)], -1)
    b = torch.stack([torch.cos(2.7 * t + 0.4), torch.sin(2.7 * t + 0.4)], -1)
    is_b = motif.unsqueeze(-1).bool()
    active, other = torch.where(is_b, b, a), torch.where(is_b, a, b)
    x = 0.05 * torch.randn(batch, length, dim, generator=gen)
    x[..., :2] = 0.85 * active + 0.15 * other
    x[..., 2], x[..., 3] = (motif == 0).float(), (motif == 1).float()
    change = torch.zeros(length, dtype=torch.bool)
    change[1:] = motif[1:] != motif[:-1]
    mask = change.clone()
    mask[:-1] |= change[1:]
    mask[1:] |= change[:-1]
    return x, mask


def codebook_options(dim: int, mix: float, size: int, topk: int | None) -> dict[str, Any]:
    """2 manifold-keyed pages, phase-quorum gate, codebook blend κ = mix over ``size`` codes (τ 0.1)."""
    gate = dict(PHASE_QUORUM, phase_pairs=phase_pairs(dim))
    if mix > 0:
        gate.update(codebook_mix=mix, codebook_size=size, codebook_temperature=0.1, codebook_topk=topk)
    return paged(dim, page_routing="manifold", complexity=gate)


def sweep_variants(setup: Setup) -> tuple[dict[str, Variant], dict[str, dict[str, Any]]]:
    """The grid's variants by name, their parameters, and the two controls (parameters {})."""
    extra = setup.extra
    grid = [(0.0, None, None)] + [(mix, size, topk) for mix, size, topk in
                                  itertools.product(extra["codebook_mixes"], extra["codebook_sizes"],
                                                    extra["codebook_topks"])
                                  if mix > 0 and (topk is None or topk <= size)]
    variants, params = {}, {}
    for mix, size, topk in grid:
        # no dots in names: the regression guard's metric paths are dot-separated
        name = "codebook_off" if mix == 0 else f"mix{mix:g}_k{size}_top{topk or 'all'}".replace(".", "p")
        variants[name] = Variant(1, codebook_options(setup.dim, mix, size or 2, topk))
        params[name] = {"codebook_mix": mix, "codebook_size": size, "codebook_topk": topk}
    variants["same_heads"], variants["baseline"] = Variant(2, None), Variant(1, None)
    params["same_heads"], params["baseline"] = {}, {}
    return variants, params


def run_motif(variant: Variant, setup: Setup, seed: int) -> dict[str, float]:
    """Train on one multi-motif draw; MSE overall and at motif boundaries on a held-out draw; the score."""
    model = build(variant, setup, seed)
    data, _ = multi_motif(setup.batch, setup.seq_len, setup.dim, torch.Generator().manual_seed(4000 + seed))
    held, mask = multi_motif(setup.batch, setup.seq_len, setup.dim, torch.Generator().manual_seed(8000 + seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, ms = train_steps(model, optimizer, lambda _: data, setup.steps)
    with torch.no_grad():
        error = (model(held) - held).pow(2).mean(-1)  # [B, T]
    total, boundary = error.mean().item(), error[:, mask].mean().item()
    boundaries = setup.steps * setup.batch * (setup.seq_len // setup.chunk)
    return {"train_tail_loss": tail(losses), "mse_total": total, "mse_boundary": boundary, "step_ms": ms,
            "switch_rate": model.switches() / boundaries, "score": 0.7 * boundary + 0.3 * total}


def protocol_codebook_sweep(setup: Setup) -> tuple[dict, list, list[str]]:
    variants, params = sweep_variants(setup)
    trials: dict[str, Any] = {}
    for name, variant in variants.items():
        trials[name] = collect([run_motif(variant, setup, seed) for seed in setup.seeds])
        trials[name]["params"] = params[name]
        trials[name]["internal_heads"] = variant.internal_heads()
        print(f"  {name}: done", file=sys.stderr)
    grid = [n for n in trials if params[n]]
    ranking = sorted(grid, key=lambda n: trials[n]["score"]["mean"])
    metrics = {"trials": trials, "ranking": ranking, "best": ranking[0], "top5": ranking[:5]}
    checks = [{"path": f"trials.{n}.{m}", "kind": "loss"} for n in (ranking[0], "codebook_off", "same_heads")
              for m in ("mse_total", "mse_boundary")]
    rows = [[n, str(trials[n]["internal_heads"]), fmt(trials[n]["mse_boundary"]), fmt(trials[n]["mse_total"]),
             fmt(trials[n]["score"]), fmt(trials[n]["switch_rate"], 3)] for n in [*ranking, "same_heads", "baseline"]]
    table = markdown_table(["trial (best first)", "heads", "boundary MSE", "total MSE", "score", "switch rate"], rows)
    return metrics, checks, table


# -- transfer comparisons ----------------------------------------------------------------------------------


def run_transfer(variant: Variant, setup: Setup, seed: int) -> dict[str, Any]:
    """A fresh model on the long-horizon phase and another on the interference phase; the transfer score."""
    long, interference = run_long_horizon(variant, setup, seed), run_interference(variant, setup, seed)
    return {"long_horizon": long, "interference": interference, "transfer_score": transfer_score(long, interference)}


def improvement_pct(reference: dict[str, Any], candidate: dict[str, Any]) -> dict[str, float]:
    """(reference − candidate) / |reference| · 100 on the four transfer figures (positive: candidate better)."""
    def pct(ref: float, cand: float) -> float:
        return (ref - cand) / max(abs(ref), 1e-12) * 100

    return {"long_clean_mse_post_pct": pct(reference["long_horizon"]["clean_mse_post"],
                                           candidate["long_horizon"]["clean_mse_post"]),
            "long_phase_err_post_pct": pct(reference["long_horizon"]["phase_err_post"],
                                           candidate["long_horizon"]["phase_err_post"]),
            "interference_post_a_pct": pct(reference["interference"]["post_a_loss"],
                                           candidate["interference"]["post_a_loss"]),
            "transfer_score_pct": pct(reference["transfer_score"], candidate["transfer_score"])}


def compare_transfer(variants: dict[str, Variant], setup: Setup, candidate: str) -> tuple[dict, list, list[str]]:
    """Every variant on every seed; ``candidate`` against each other variant, paired by seed."""
    runs = {}
    for name, variant in variants.items():
        runs[name] = [run_transfer(variant, setup, seed) for seed in setup.seeds]
        print(f"  {name}: done", file=sys.stderr)
    metrics: dict[str, Any] = {name: collect(per_seed) for name, per_seed in runs.items()}
    for name, cell in metrics.items():
        cell["description"], cell["internal_heads"] = variants[name].description, variants[name].internal_heads()
    metrics["ranking"] = sorted(variants, key=lambda n: metrics[n]["transfer_score"]["mean"])
    metrics["winner"] = metrics["ranking"][0]
    metrics["comparisons"] = {
        f"{candidate}_vs_{other}": collect([improvement_pct(ref, cand)
                                            for ref, cand in zip(runs[other], runs[candidate], strict=True)])
        for other in variants if other != candidate}
    checks = [{"path": f"{n}.transfer_score", "kind": "loss"} for n in variants]
    checks += [{"path": f"{candidate}.{p}", "kind": "loss"} for p in
               ("long_horizon.clean_mse_post", "long_horizon.phase_err_post", "interference.post_a_loss")]
    rows = [[n, str(variants[n].internal_heads()), fmt(metrics[n]["long_horizon"]["clean_mse_post"]),
             fmt(metrics[n]["long_horizon"]["phase_err_post"]), fmt(metrics[n]["interference"]["post_a_loss"]),
             fmt(metrics[n]["transfer_score"])] for n in metrics["ranking"]]
    table = markdown_table(["variant (best first)", "heads", "long clean post", "long phase err post",
                            "A after B", "transfer score"], rows)
    table += ["", f"{candidate} vs (transfer score improvement %, per seed):"]
    table += [f"  {key.removeprefix(candidate + '_vs_')}: {fmt(cell['transfer_score_pct'], 3)}"
              for key, cell in metrics["comparisons"].items()]
    return metrics, checks, table


def keyed_gate(dim: int) -> dict[str, Any]:
    return dict(PHASE_QUORUM, phase_pairs=phase_pairs(dim))


def protocol_codebook_transfer(setup: Setup) -> tuple[dict, list, list[str]]:
    dim = setup.dim
    variants = {
        "baseline": Variant(1, None, "1 head, no options"),
        "same_heads": Variant(2, None, "2 plain heads: the paged models' head count, no routing"),
        "symplectic_paging": Variant(1, paged(dim), "twist gating + 2 pages, sequential"),
        "phase_quorum_paging": Variant(1, paged(dim, page_routing="manifold", complexity=keyed_gate(dim)),
                                       "phase-quorum gate, 2 manifold-keyed pages"),
        "codebook_champion_paging": Variant(1, codebook_options(dim, 0.5, 16, None),
                                            "phase-quorum + codebook (κ 0.5, K 16, τ 0.1), 2 keyed pages"),
    }
    return compare_transfer(variants, setup, "codebook_champion_paging")


def protocol_manifold_transfer(setup: Setup) -> tuple[dict, list, list[str]]:
    dim = setup.dim
    variants = {
        "baseline": Variant(1, None, "1 head, no options"),
        "same_heads": Variant(2, None, "2 plain heads: the paged models' head count, no routing"),
        "threshold_paging": Variant(1, paged(dim, complexity=keyed_gate(dim)),
                                    "phase-quorum gate, 2 pages switched in turn"),
        "manifold_keyed_paging": Variant(1, paged(dim, page_routing="manifold", complexity=keyed_gate(dim)),
                                         "phase-quorum gate, 2 pages keyed on the manifold state"),
    }
    return compare_transfer(variants, setup, "manifold_keyed_paging")
