"""Mutation-selection search over gate configurations (the fork's genetic search), with the fork's noise removed.

Genes and alleles (the fork's): phase mix φ {0, .25, .5, .75}; quorum mix ρ {0, .35, .55, .75}; sequence budget
β {None, .15, .2, .25, .3} (None whenever ρ = 0); hierarchical {False, True}; hierarchy mix λ {.5, .75, 1};
quorum window w {3, 5, 7}; quorum threshold θq {.2, .25, .3}; quorum temperature Tq {.08, .1, .15}. Fixed:
gated, diagonal, soft gate, D // 8 phase pairs; 2 sequential pages, or 4 hierarchical ones (2 × 2).

Each generation scores every candidate not scored before, sorts by fitness (lower is better), keeps the elites
and fills the population with mutated copies of random elites (each gene redrawn with probability ``p``).

Design choice (where this differs from the fork): a candidate's fitness is its mean over a fixed set of seeds,
computed once (common random numbers: every candidate sees the same initialisations and data). The fork
re-evaluated elites with fresh initialisations and kept the luckiest draw, so its winner was partly noise; its
own reruns flipped the winner at 1–3 % margins. The caller re-measures the winner on seeds the search never saw.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

GENES: dict[str, tuple[Any, ...]] = {
    "phase_mix": (0.0, 0.25, 0.5, 0.75),
    "quorum_mix": (0.0, 0.35, 0.55, 0.75),
    "budget_topk_ratio": (None, 0.15, 0.2, 0.25, 0.3),
    "hierarchical": (False, True),
    "hierarchy_mix": (0.5, 0.75, 1.0),
    "quorum_window": (3, 5, 7),
    "quorum_threshold": (0.2, 0.25, 0.3),
    "quorum_temperature": (0.08, 0.1, 0.15),
}

# the fork's hand-seeded first member
SEEDED = {"phase_mix": 0.5, "quorum_mix": 0.75, "budget_topk_ratio": 0.2, "hierarchical": True,
          "hierarchy_mix": 1.0, "quorum_window": 5, "quorum_threshold": 0.25, "quorum_temperature": 0.1}


def legal(candidate: dict[str, Any]) -> dict[str, Any]:
    """The candidate with β forced to None when ρ = 0 (the budget filters the quorum factor)."""
    return dict(candidate, budget_topk_ratio=None) if candidate["quorum_mix"] == 0 else dict(candidate)


def random_candidate(rng: random.Random) -> dict[str, Any]:
    return legal({gene: rng.choice(alleles) for gene, alleles in GENES.items()})


def mutate(candidate: dict[str, Any], rng: random.Random, p: float) -> dict[str, Any]:
    return legal({gene: rng.choice(GENES[gene]) if rng.random() < p else value for gene, value in candidate.items()})


def layer_options(candidate: dict[str, Any], dim: int) -> dict[str, Any]:
    """The memory layer's ``symplectic`` options of a candidate."""
    complexity: dict[str, Any] = dict(gated=True, diag=True, gate_mode="soft", phase_pairs=max(1, dim // 8),
                                      phase_mix=candidate["phase_mix"])
    if candidate["quorum_mix"] > 0:
        complexity.update(quorum_mix=candidate["quorum_mix"], quorum_window=candidate["quorum_window"],
                          quorum_threshold=candidate["quorum_threshold"],
                          quorum_temperature=candidate["quorum_temperature"],
                          budget_topk_ratio=candidate["budget_topk_ratio"])
    options: dict[str, Any] = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=1.0,
                                   page_threshold_units="noise", complexity=complexity)
    if candidate["hierarchical"]:
        options.update(num_pages=4, page_routing="hierarchical", coarse_pages=2, fine_pages=2,
                       hierarchy_mix=candidate["hierarchy_mix"])
    return options


def key(candidate: dict[str, Any]) -> tuple:
    return tuple(candidate[g] for g in GENES)


def search(fitness: Callable[[dict[str, Any]], float], rng: random.Random, population: int, generations: int,
           elites: int, p: float) -> tuple[list[dict[str, Any]], dict[tuple, float]]:
    """Run the search; (per-generation best {generation, candidate, fitness}, every score by candidate key)."""
    if not 1 <= elites <= population:
        raise ValueError(f"elites must be in [1, population], got {elites} with population {population}")
    scores: dict[tuple, float] = {}
    members = [legal(SEEDED)] + [random_candidate(rng) for _ in range(population - 1)]
    history = []
    for generation in range(generations):
        for member in members:
            if key(member) not in scores:
                scores[key(member)] = fitness(member)
        members.sort(key=lambda m: scores[key(m)])
        history.append({"generation": generation, "candidate": members[0], "fitness": scores[key(members[0])]})
        kept = members[:elites]
        members = kept + [mutate(rng.choice(kept), rng, p) for _ in range(population - elites)]
    return history, scores
