"""Symplectic gating, memory paging and kinetics: the titans-pytorch fork's benchmark protocols on ttmem.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/symplectic/run.py PROTOCOL --threads 1 [--out FILE]

Protocols (``common.py`` has the data, the model and the training loop):
- ``symplectic``: forward / train-step time, spiral and helix + drift reconstruction, long-horizon
  perturb-and-recover, for baseline (1 head), same_heads (2 plain heads), symplectic (gating, 1 head),
  symplectic_paging, dmd_paging, symplectic_dmd_paging and symplectic_phase_paging (2 pages of 1 head).
- ``interference``: train on task A, then on task B (different directions and periods), forgetting on A.
- ``threshold``: switch and crossing rates and loss against the page threshold, raw and width-normalised,
  at two widths.
- ``variants``: gate variants (hard / soft / diagonal / top-k / adaptive top-k / phase / quorum budget /
  codebook / hierarchical and manifold routing / kinetics) on spiral and helix.
- ``kinetics``: kinetics mix 0 .. 1 on the phase-quorum paged memory.
- ``mutation`` / ``mutation_transfer``: mutation-selection search over gate configurations (``search.py``), fitness
  on ``--seeds``, the winner re-measured beside the fork's hand-seeded candidate and the same-heads controls on
  ``--check-seeds``; the transfer variant adds long-horizon and interference terms to the fitness.
- ``budget``: the switch budget (at most K page changes per sample in any ``--switch-window`` chunk boundaries,
  a hard causal cap) swept over ``--budgets`` on 4 manifold-keyed pages with the quorum-budget gate; loss,
  switch rate and refused-switch rate against K, beside the unconstrained model and 4 plain heads.
  ``--carry-state``: each training step continues the memory state of the previous one (the fork's flag).
- ``codebook_sweep``, ``codebook_transfer``, ``manifold_transfer`` (``transfer.py``): the codebook grid on
  multi-motif data, and the codebook and manifold-paging transfer comparisons (long-horizon + interference).

Every protocol runs each variant on every seed (``--seeds``) with a fresh model per phase, writes JSON (tag,
device, config, metrics as mean / min / max / values over seeds, and the checks ``regress.py`` applies),
optionally appends a CSV row (``--csv``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search  # noqa: E402
import transfer  # noqa: E402
from common import (  # noqa: E402
    PHASE_QUORUM,
    AutoAssociative,
    Setup,
    Variant,
    build,
    collect,
    fmt,
    helix_drift,
    markdown_table,
    paged,
    phase_pairs,
    run_interference,
    run_long_horizon,
    spiral,
    tail,
    time_models,
    train_steps,
    transfer_score,
    write_report,
)

TASKS = {"spiral": spiral, "helix_drift": helix_drift}


def symplectic_variants(dim: int) -> dict[str, Variant]:
    phase = dict(gated=True, diag=True, gate_mode="soft", phase_mix=0.5, phase_pairs=phase_pairs(dim))
    dmd = dict(use_dmd_gating=True, num_pages=2, complexity=dict(dmd_window=2 * dim))
    return {
        "baseline": Variant(1, None, "1 head, no options"),
        "same_heads": Variant(2, None, "2 plain heads: the paged models' head count, no routing"),
        "symplectic": Variant(1, dict(use_symplectic_gating=True), "twist gating of the forget rate"),
        "symplectic_paging": Variant(1, paged(dim), "gating + 2 pages, sequential"),
        "dmd_paging": Variant(1, dmd, "DMD gating (window 2·dim) + 2 pages, threshold 0.4"),
        "symplectic_dmd_paging": Variant(1, dict(use_symplectic_gating=True, use_dmd_gating=True,
                                                 combine_symplectic_and_dmd=True, num_pages=2,
                                                 symplectic_page_threshold=0.2,
                                                 complexity=dict(gated=True, diag=True, gate_mode="soft",
                                                                 phase_mix=0.25, phase_pairs=phase_pairs(dim),
                                                                 dmd_window=2 * dim)),
                                         "even blend of twist and DMD + 2 pages"),
        "symplectic_phase_paging": Variant(1, paged(dim, complexity=phase), "gated soft, phase 0.5, 2 pages"),
    }


def train_task(variant: Variant, setup: Setup, seed: int, task: str) -> tuple[list[float], float, AutoAssociative]:
    """A fresh model trained ``setup.steps`` steps on one fixed sequence of ``task``: (losses, ms per step, model);
    ``setup.extra["carry_state"]`` carries the memory state from step to step (``train_steps``)."""
    model = build(variant, setup, seed)
    data = TASKS[task](setup.batch, setup.seq_len, setup.dim, torch.Generator().manual_seed(1000 + seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, ms = train_steps(model, optimizer, lambda _: data, setup.steps, setup.extra.get("carry_state", False))
    return losses, ms, model


def run_task(variant: Variant, setup: Setup, seed: int, task: str) -> tuple[float, float, int]:
    losses, ms, model = train_task(variant, setup, seed, task)
    return tail(losses), ms, model.switches()


def protocol_symplectic(setup: Setup) -> tuple[dict, list, list[str]]:
    variants = symplectic_variants(setup.dim)
    timings = {}
    for seed in setup.seeds:
        x = torch.randn(setup.batch, setup.seq_len, setup.dim, generator=torch.Generator().manual_seed(seed))
        timings[seed] = time_models({n: build(v, setup, seed) for n, v in variants.items()}, x)
    metrics = {}
    for name, variant in variants.items():
        runs = []
        for seed in setup.seeds:
            run: dict[str, Any] = dict(timings[seed][name])
            switches = 0
            for task in TASKS:
                run[task], _, events = run_task(variant, setup, seed, task)
                switches += events
            run["switch_rate"] = switches / (2 * setup.steps * setup.batch * (setup.seq_len // setup.chunk))
            run["long_horizon"] = run_long_horizon(variant, setup, seed)
            runs.append(run)
        metrics[name] = collect(runs)
        print(f"  {name}: done", file=sys.stderr)
    base = metrics["baseline"]
    for cell in metrics.values():
        cell["overhead_pct"] = {k: 100 * (cell[k]["mean"] / base[k]["mean"] - 1) for k in ("fwd_ms", "train_ms")}
    checks = []
    for name in ("baseline", "symplectic_phase_paging"):
        checks += [{"path": f"{name}.fwd_ms", "kind": "time"}, {"path": f"{name}.train_ms", "kind": "time"},
                   {"path": f"{name}.spiral", "kind": "loss"}, {"path": f"{name}.helix_drift", "kind": "loss"},
                   {"path": f"{name}.long_horizon.clean_mse_post", "kind": "loss"},
                   {"path": f"{name}.long_horizon.phase_recovery_gain", "kind": "gain"}]
    rows = [[name, str(variants[name].internal_heads()), fmt(c["fwd_ms"], 3), fmt(c["train_ms"], 3),
             f"{c['overhead_pct']['train_ms']:+.0f}%", fmt(c["spiral"]), fmt(c["helix_drift"]),
             fmt(c["long_horizon"]["clean_mse_post"]), f"{c['switch_rate']['mean']:.3f}"]
            for name, c in metrics.items()]
    table = markdown_table(["variant", "heads", "fwd ms", "train ms", "train vs base", "spiral", "helix+drift",
                            "long clean post", "switch rate"], rows)
    return metrics, checks, table


def interference_variants(dim: int) -> dict[str, Variant]:
    keyed = dict(PHASE_QUORUM, phase_pairs=phase_pairs(dim))
    return {
        "baseline": Variant(1, None, "1 head"),
        "same_heads": Variant(2, None, "2 plain heads"),
        "symplectic_paging": Variant(1, paged(dim), "2 pages, sequential"),
        "manifold_paging": Variant(1, paged(dim, page_routing="manifold", complexity=keyed),
                                   "2 pages keyed on the manifold state, phase-quorum gate"),
    }


def protocol_interference(setup: Setup) -> tuple[dict, list, list[str]]:
    metrics = {}
    for name, variant in interference_variants(setup.dim).items():
        metrics[name] = collect([run_interference(variant, setup, seed) for seed in setup.seeds])
        print(f"  {name}: done", file=sys.stderr)
    checks = [{"path": f"{n}.{m}", "kind": "loss"} for n in metrics for m in ("pre_a_loss", "post_a_loss")]
    checks += [{"path": f"{n}.step_ms", "kind": "time"} for n in metrics]
    rows = [[n, fmt(c["pre_a_loss"]), fmt(c["post_a_loss"]), fmt(c["forgetting_delta"]), fmt(c["post_b_loss"]),
             fmt(c["step_ms"], 3), f"{c['switch_rate']['mean']:.3f}"] for n, c in metrics.items()]
    table = markdown_table(["variant", "A before B", "A after B", "forgetting", "B after B", "step ms",
                            "switch rate"], rows)
    return metrics, checks, table


def protocol_threshold(setup: Setup) -> tuple[dict, list, list[str]]:
    grid = {"raw": (0.05, 0.1, 0.2, 0.35, 0.5), "noise": (0.8, 1.0, 1.2, 1.5, 2.0)}
    metrics: dict[str, Any] = {}
    rows = []
    boundaries = setup.steps * setup.batch * (setup.seq_len // setup.chunk)
    for dim in setup.extra["dims"]:
        for units, thresholds in grid.items():
            for thr in thresholds:
                runs = []
                for seed in setup.seeds:
                    variant = Variant(1, dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=thr,
                                              page_threshold_units=units))
                    local = Setup(dim, setup.seq_len, setup.batch, setup.chunk, setup.steps, (seed,))
                    model = build(variant, local, seed)
                    data = spiral(setup.batch, setup.seq_len, dim, torch.Generator().manual_seed(1000 + seed))
                    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
                    losses, _ = train_steps(model, optimizer, lambda _, data=data: data, setup.steps)
                    paging = model.memory.symplectic
                    runs.append({"final_loss": tail(losses),
                                 "crossing_rate": int(paging.page_threshold_crossings) / boundaries,
                                 "switch_rate": int(paging.page_switch_events) / boundaries})
                key = f"dim{dim}.{units}.{thr:g}"
                cell = collect(runs)
                metrics.setdefault(f"dim{dim}", {}).setdefault(units, {})[f"{thr:g}"] = cell
                rows.append([key, fmt(cell["crossing_rate"], 3), fmt(cell["switch_rate"], 3), fmt(cell["final_loss"])])
        print(f"  dim {dim}: done", file=sys.stderr)
    checks = [{"path": f"dim{d}.noise.1.final_loss", "kind": "loss"} for d in setup.extra["dims"]]
    return metrics, checks, markdown_table(["dim.units.threshold", "crossing rate", "switch rate", "spiral loss"],
                                           rows)


def gate_variants(dim: int) -> dict[str, Variant]:
    m = phase_pairs(dim)
    soft_phase = dict(gated=True, diag=True, gate_mode="soft", phase_mix=0.5, phase_pairs=m)
    quorum = dict(PHASE_QUORUM, phase_pairs=m)
    return {
        "baseline": Variant(1, None),
        "same_heads": Variant(2, None),
        "symplectic_default": Variant(1, paged(dim)),
        "hard_diag": Variant(1, paged(dim, complexity=dict(gated=True, diag=True, gate_mode="hard"))),
        "soft_diag": Variant(1, paged(dim, complexity=dict(gated=True, diag=True, gate_mode="soft"))),
        "hard_topk8": Variant(1, paged(dim, complexity=dict(gated=True, diag=True, gate_mode="hard", top_k=8))),
        "adaptive_topk": Variant(1, paged(dim, complexity=dict(gated=True, diag=True, gate_mode="soft",
                                                                   adaptive_topk_ratio=0.6))),
        "phase_mix": Variant(1, paged(dim, complexity=soft_phase)),
        "quorum_budget": Variant(1, paged(dim, complexity=dict(quorum, quorum_mix=0.75, budget_topk_ratio=0.2))),
        "kinetics_coupled": Variant(1, paged(dim, complexity=quorum, kinetics_coupling=True, kinetics_mix=0.5)),
        "codebook": Variant(1, paged(dim, complexity=dict(quorum, codebook_mix=0.7, codebook_size=16,
                                                              codebook_topk=3))),
        "manifold_route": Variant(1, paged(dim, complexity=soft_phase, page_routing="manifold")),
        "hierarchical_route": Variant(1, dict(paged(dim, complexity=soft_phase), num_pages=4,
                                              page_routing="hierarchical", coarse_pages=2, fine_pages=2)),
        "same_heads_4": Variant(4, None),
    }


def per_task(variants: dict[str, Variant], setup: Setup,
             measure: Callable[[Variant, int, str], dict[str, float]]) -> dict[str, Any]:
    """{variant: {task: spread of measure(variant, seed, task) over the seeds}}."""
    metrics = {}
    for name, variant in variants.items():
        metrics[name] = collect([{task: measure(variant, seed, task) for task in TASKS} for seed in setup.seeds])
        print(f"  {name}: done", file=sys.stderr)
    return metrics


def protocol_variants(setup: Setup, variants: dict[str, Variant] | None = None) -> tuple[dict, list, list[str]]:
    variants = variants or gate_variants(setup.dim)

    def measure(variant: Variant, seed: int, task: str) -> dict[str, float]:
        loss, ms, _ = run_task(variant, setup, seed, task)
        return {"final_loss": loss, "step_ms": ms}

    metrics = per_task(variants, setup, measure)
    checks = [{"path": f"{n}.{t}.final_loss", "kind": "loss"} for n in metrics for t in TASKS]
    rows = [[n, str(variants[n].internal_heads()), fmt(c["spiral"]["final_loss"]),
             fmt(c["helix_drift"]["final_loss"]), fmt(c["spiral"]["step_ms"], 3)] for n, c in metrics.items()]
    return metrics, checks, markdown_table(["variant", "heads", "spiral", "helix+drift", "step ms"], rows)


def protocol_kinetics(setup: Setup) -> tuple[dict, list, list[str]]:
    quorum = dict(PHASE_QUORUM, phase_pairs=phase_pairs(setup.dim))
    variants = {f"mix_{k:g}": Variant(1, paged(setup.dim, complexity=quorum, kinetics_coupling=True, kinetics_mix=k))
                for k in (0.0, 0.25, 0.5, 0.75, 1.0)}
    variants["same_heads"] = Variant(2, None)
    return protocol_variants(setup, variants)


def budget_variants(dim: int, budgets: list[int], window: int) -> dict[str, Variant]:
    """4 manifold-keyed pages, raw threshold 0.1, quorum-budget gate; unconstrained, then each budget K."""
    gate = dict(PHASE_QUORUM, phase_pairs=phase_pairs(dim), quorum_mix=0.75, budget_topk_ratio=0.2)
    base = dict(use_symplectic_gating=True, num_pages=4, symplectic_page_threshold=0.1, page_routing="manifold",
                complexity=gate)
    variants = {"unconstrained": Variant(1, base, "no cap")}
    for k in budgets:
        variants[f"budget_{k}"] = Variant(1, dict(base, page_switch_budget=k, page_switch_window=window),
                                          f"at most {k} page changes per {window} boundaries")
    variants["same_heads_4"] = Variant(4, None, "4 plain heads: the paged models' head count, no routing")
    return variants


def protocol_budget(setup: Setup) -> tuple[dict, list, list[str]]:
    variants = budget_variants(setup.dim, setup.extra["budgets"], setup.extra["switch_window"])
    boundaries = setup.steps * setup.batch * (setup.seq_len // setup.chunk)

    def measure(variant: Variant, seed: int, task: str) -> dict[str, float]:
        losses, ms, model = train_task(variant, setup, seed, task)
        paging = model.memory.symplectic
        blocked = int(getattr(paging, "page_switches_blocked", 0)) if paging is not None else 0
        return {"final_loss": tail(losses), "step_ms": ms, "switch_rate": model.switches() / boundaries,
                "blocked_rate": blocked / boundaries}

    metrics = per_task(variants, setup, measure)
    checks = [{"path": f"{n}.{t}.final_loss", "kind": "loss"} for n in metrics for t in TASKS]
    rows = [[n, fmt(c["spiral"]["final_loss"]), fmt(c["helix_drift"]["final_loss"]),
             fmt(c["spiral"]["switch_rate"], 3), fmt(c["helix_drift"]["switch_rate"], 3),
             fmt(c["spiral"]["blocked_rate"], 3), fmt(c["spiral"]["step_ms"], 3)] for n, c in metrics.items()]
    return metrics, checks, markdown_table(["variant", "spiral", "helix+drift", "switch rate spiral",
                                            "switch rate helix", "refused rate spiral", "step ms"], rows)


def mutation_fitness(variant: Variant, setup: Setup, seeds: tuple[int, ...]) -> dict[str, float]:
    """The search's fitness parts, averaged over ``seeds`` (lower is better; ``search.py``)."""
    latency, weight = setup.extra["latency_weight"], setup.extra["transfer_weight"]
    runs = []
    for seed in seeds:
        (spiral_loss, spiral_ms, _), (helix_loss, helix_ms, _) = (run_task(variant, setup, seed, t) for t in TASKS)
        run = {"spiral": spiral_loss, "helix_drift": helix_loss, "step_ms": (spiral_ms + helix_ms) / 2}
        run["classic"] = (spiral_loss + helix_loss) / 2 + latency * run["step_ms"]
        run["fitness"] = run["classic"]
        if weight > 0:
            long, interference = run_long_horizon(variant, setup, seed), run_interference(variant, setup, seed)
            run.update(clean_mse_post=long["clean_mse_post"], phase_err_post=long["phase_err_post"],
                       post_a_loss=interference["post_a_loss"])
            run["transfer"] = transfer_score(long, interference)
            run["fitness"] = (1 - weight) * run["classic"] + weight * run["transfer"]
        runs.append(run)
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]} | {"per_seed": runs}


def protocol_mutation(setup: Setup) -> tuple[dict, list, list[str]]:
    extra = setup.extra
    rng = random.Random(extra["search_seed"])
    evaluated = []

    def fitness(candidate: dict[str, Any]) -> float:
        value = mutation_fitness(Variant(1, search.layer_options(candidate, setup.dim)), setup, setup.seeds)["fitness"]
        evaluated.append({"candidate": candidate, "fitness": value})
        print(f"  candidate {len(evaluated)}: {value:.5f}", file=sys.stderr)
        return value

    history, _ = search.search(fitness, rng, extra["population"], extra["generations"], extra["elites"],
                               extra["mutation_p"])
    winner = history[-1]["candidate"]
    finalists = {"winner": Variant(1, search.layer_options(winner, setup.dim)),
                 "seeded": Variant(1, search.layer_options(search.legal(search.SEEDED), setup.dim)),
                 "same_heads": Variant(2, None), "same_heads_4": Variant(4, None)}
    check_seeds = tuple(extra["check_seeds"])
    metrics: dict[str, Any] = {"search": {"history": history, "evaluated": evaluated, "winner": winner}}
    for name, variant in finalists.items():
        metrics[name] = collect(mutation_fitness(variant, setup, check_seeds)["per_seed"])
        print(f"  {name} on the check seeds: done", file=sys.stderr)
    parts = [k for k in ("classic", "transfer", "fitness") if k in metrics["winner"]]
    checks = [{"path": f"{n}.{k}", "kind": "loss"} for n in finalists for k in ("spiral", "helix_drift")]
    rows = [[n, str(finalists[n].internal_heads()), fmt(c["spiral"]), fmt(c["helix_drift"]),
             *(fmt(c[k]) for k in parts)] for n, c in metrics.items() if n != "search"]
    table = markdown_table(["finalist (check seeds)", "heads", "spiral", "helix+drift", *parts], rows)
    table += ["", "search history (search seeds): " + "; ".join(
        f"gen {h['generation']} {h['fitness']:.5f}" for h in history), f"winner: {winner}"]
    return metrics, checks, table


PROTOCOLS = {"symplectic": protocol_symplectic, "interference": protocol_interference,
             "threshold": protocol_threshold, "variants": protocol_variants, "kinetics": protocol_kinetics,
             "budget": protocol_budget, "mutation": protocol_mutation, "mutation_transfer": protocol_mutation,
             "codebook_sweep": transfer.protocol_codebook_sweep,
             "codebook_transfer": transfer.protocol_codebook_transfer,
             "manifold_transfer": transfer.protocol_manifold_transfer}
LONG_HORIZON_PROTOCOLS = ("symplectic", "codebook_transfer", "manifold_transfer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("protocol", choices=sorted(PROTOCOLS))
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated torch seeds")
    p.add_argument("--long-len", type=int, default=192, help="long-horizon sequence length (symplectic, *_transfer)")
    p.add_argument("--long-steps", default="20,10,10", help="long-horizon warm-up, perturb, recovery steps")
    p.add_argument("--dims", default="16,64", help="widths of the threshold sweep")
    p.add_argument("--budgets", default="4,2,1,0", help="switch budgets K of the budget sweep")
    p.add_argument("--switch-window", type=int, default=8, help="chunk boundaries per switch budget window")
    p.add_argument("--carry-state", action="store_true", help="budget: each training step continues the memory "
                   "state (weights, active page, switch history) the previous step ended with, detached")
    p.add_argument("--codebook-mixes", default="0.5,0.7", help="codebook_sweep: codebook blends κ > 0 (κ = 0 is "
                   "always a trial)")
    p.add_argument("--codebook-sizes", default="8,16,24", help="codebook_sweep: codebook sizes K")
    p.add_argument("--codebook-topks", default="none,2,4", help="codebook_sweep: top-k values ('none': all codes)")
    p.add_argument("--population", type=int, default=8, help="mutation search: candidates per generation")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--elites", type=int, default=3)
    p.add_argument("--mutation-p", type=float, default=0.35, help="probability of redrawing each gene")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the search's own random choices")
    p.add_argument("--check-seeds", default="1,2,3", help="seeds the finalists are re-measured on")
    p.add_argument("--latency-weight", type=float, default=0.0,
                   help="fitness weight of step ms (the fork's 1e-3; 0 because shared-machine timings are noise)")
    p.add_argument("--transfer-weight", type=float, default=0.5, help="mutation_transfer: weight w of the transfer "
                   "score in the fitness (1 − w) classic + w transfer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="local")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/symplectic_PROTOCOL.json)")
    p.add_argument("--csv", default=None, help="append one row of means to this CSV file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    extra: dict[str, Any] = {}
    if args.protocol in LONG_HORIZON_PROTOCOLS:
        extra = {"long_len": args.long_len, "long_steps": [int(s) for s in args.long_steps.split(",")]}
    if args.protocol == "threshold":
        extra = {"dims": [int(d) for d in args.dims.split(",")]}
    if args.protocol.startswith("mutation"):
        extra = {"population": args.population, "generations": args.generations, "elites": args.elites,
                 "mutation_p": args.mutation_p, "search_seed": args.search_seed,
                 "check_seeds": [int(s) for s in args.check_seeds.split(",")], "latency_weight": args.latency_weight,
                 "transfer_weight": args.transfer_weight if args.protocol == "mutation_transfer" else 0.0,
                 "long_len": args.long_len, "long_steps": [int(s) for s in args.long_steps.split(",")]}
    if args.protocol == "budget":
        extra = {"budgets": [int(k) for k in args.budgets.split(",")], "switch_window": args.switch_window,
                 "carry_state": args.carry_state}
    if args.protocol == "codebook_sweep":
        extra = {"codebook_mixes": [float(k) for k in args.codebook_mixes.split(",")],
                 "codebook_sizes": [int(k) for k in args.codebook_sizes.split(",")],
                 "codebook_topks": [None if k == "none" else int(k) for k in args.codebook_topks.split(",")]}
    setup = Setup(args.dim, args.seq_len, args.batch, args.chunk, args.steps,
                  tuple(int(s) for s in args.seeds.split(",")), extra)
    metrics, checks, table = PROTOCOLS[args.protocol](setup)
    out = Path(args.out or f"benchmarks/results/symplectic_{args.protocol}.json")
    return write_report(args.protocol, args.tag, setup, metrics, checks, out,
                        Path(args.csv) if args.csv else None, table)


if __name__ == "__main__":
    main()
