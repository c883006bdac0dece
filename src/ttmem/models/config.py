"""One configuration type for every language model in ttmem.

Design choices:
- A single flat dataclass; each architecture reads the fields it needs and ignores the rest, so a
  preset is plain data and a checkpoint's JSON config rebuilds the model with no code change.
- ``memory_rule=None`` means the architecture's own default rule (``DEFAULT_MEMORY_RULES``);
  Titans-style architectures (lmm, mac, mag, mal, hope) accept any rule of the memory engine.
- Validation happens at construction and names the offending field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ARCHITECTURES = (
    "transformer",
    "swa_transformer",
    "linear_attention",
    "deltanet",
    "gated_deltanet",
    "lmm",
    "mac",
    "mag",
    "mal",
    "hope",
    "theta_lm",
)

# The memory rule each architecture uses when ``memory_rule`` is None; the baselines are fixed rules.
DEFAULT_MEMORY_RULES = {
    "linear_attention": "linear_attention",
    "deltanet": "delta",
    "gated_deltanet": "gated_delta",
    "lmm": "titans",
    "mac": "titans",
    "mag": "titans",
    "mal": "titans",
    "hope": "titans",
    "theta_lm": "theta",
}
MAC_OUTPUTS = ("product", "gate", "residual")  # MAC's combination of attention output and memory read
MAC_MEMORY_INPUTS = ("attention", "segment")  # what MAC's memory is written with: y (the paper) or the input
# Architectures the symplectic / paging options reach: those whose memory layers are NeuralMemory, and HOPE,
# whose self-modifying layer's main memory takes them (its continuum levels and projection memories do not).
MEMORY_OPTION_ARCHITECTURES = ("linear_attention", "deltanet", "gated_deltanet", "lmm", "mac", "mag", "mal",
                               "theta_lm", "hope")
FIXED_RULE_ARCHITECTURES = {
    "linear_attention": ("linear_attention",),
    "deltanet": ("delta",),
    "gated_deltanet": ("gated_delta",),
    "theta_lm": ("theta", "theta_lowrank"),
}


@dataclass
class ModelConfig:
    """Shape and architecture of a language model.

    Fields: arch (one of ARCHITECTURES); vocab_size; dim (model width); depth (number of blocks);
    heads / dim_head (attention and memory heads); mlp_ratio (SwiGLU hidden = mlp_ratio * dim);
    window (sliding-window size for swa_transformer, mag, mal); segment_len (MAC segment length);
    mac_output (MAC's combination o = y ⊗ M(y): "product", "gate" or "residual", ``ttmem.models.titans``);
    mac_memory_input (what MAC's memory is written with: "attention", the paper's y, or "segment", the input);
    chunk_size (memory chunk for the mini-batch inner update, and HOPE's projection-memory period);
    persistent_tokens (learned always-visible attention tokens); memory_rule (engine rule name, None =
    architecture default); conv_kernel (short causal conv in memory layers, 0 = none);
    cms_periods (HOPE continuum memory update periods C^(l), fastest first); tie_embeddings;
    norm_eps; rotary_base.

    Complexity gating, memory pages and kinetics of the memory layers (``ttmem.layers.paging``; all off by
    default; architectures lmm, mac, mag, mal, the linear-memory baselines, and hope, where they act on the main
    memory of the self-modifying layer, not on the continuum levels):
    use_symplectic_gating (twist-score gating of the forget rate); use_dmd_gating (DMD-score gating; both
    on = their even blend); num_pages (pages of ``heads`` memory heads, one written at a time);
    symplectic_page_threshold (switch when a chunk's max complexity exceeds it; None = 0.5, 0.4 with DMD,
    1.5 in noise units); page_threshold_units ("raw" or "noise": units of sqrt(2 / dim));
    page_routing ("sequential", "manifold", "hierarchical"); coarse_pages (hierarchical groups; fine
    pages = num_pages / coarse_pages); hierarchy_mix (blend of sequential and hierarchical targets);
    kinetics_mix (None = off; in [0, 1]: couples step size and forgetting); complexity_args (the
    complexity signal's stage options, e.g. {"phase_mix": 0.5}).

    branch_gate_mix (0 = off; in [0, 1]: a causal per-token gate on every residual branch from how much its
    input changed, ``ttmem.layers.branch_gate``); branch_gate_odd_only (gate only blocks 1, 3, 5, ...).
    """

    arch: str = "transformer"
    vocab_size: int = 256
    dim: int = 192
    depth: int = 4
    heads: int = 4
    dim_head: int | None = None
    mlp_ratio: float = 8 / 3
    window: int = 64
    segment_len: int = 32
    mac_output: str = "product"
    mac_memory_input: str = "attention"
    chunk_size: int = 16
    persistent_tokens: int = 0
    memory_rule: str | None = None
    conv_kernel: int = 4
    cms_periods: tuple[int, ...] = field(default_factory=lambda: (16, 64, 256))
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    rotary_base: float = 10000.0
    use_symplectic_gating: bool = False
    use_dmd_gating: bool = False
    num_pages: int = 1
    symplectic_page_threshold: float | None = None
    page_threshold_units: str = "raw"
    page_routing: str = "sequential"
    coarse_pages: int = 1
    hierarchy_mix: float = 1.0
    kinetics_mix: float | None = None
    complexity_args: dict[str, Any] = field(default_factory=dict)
    branch_gate_mix: float = 0.0
    branch_gate_odd_only: bool = False

    def memory_options(self) -> dict[str, Any] | None:
        """The NeuralMemory ``symplectic`` options these fields ask for (None when all are off)."""
        gating = self.use_symplectic_gating or self.use_dmd_gating
        if not gating and self.kinetics_mix is None and self.num_pages == 1 and not self.complexity_args:
            return None
        options: dict[str, Any] = dict(
            use_symplectic_gating=self.use_symplectic_gating, use_dmd_gating=self.use_dmd_gating,
            combine_symplectic_and_dmd=self.use_symplectic_gating and self.use_dmd_gating,
            num_pages=self.num_pages, symplectic_page_threshold=self.symplectic_page_threshold,
            page_threshold_units=self.page_threshold_units, page_routing=self.page_routing,
            hierarchy_mix=self.hierarchy_mix, complexity=dict(self.complexity_args))
        if self.page_routing == "hierarchical":
            if not isinstance(self.coarse_pages, int) or self.coarse_pages < 1 or self.num_pages % self.coarse_pages:
                raise ValueError(f"coarse_pages must be a positive divisor of num_pages ({self.num_pages}), "
                                 f"got {self.coarse_pages!r}")
            options.update(coarse_pages=self.coarse_pages, fine_pages=self.num_pages // self.coarse_pages)
        if self.kinetics_mix is not None:
            options.update(kinetics_coupling=True, kinetics_mix=self.kinetics_mix)
        return options

    def _check_memory_options(self) -> None:
        options = self.memory_options()
        if options is None:
            return
        if self.arch not in MEMORY_OPTION_ARCHITECTURES:
            raise ValueError(f"use_symplectic_gating, use_dmd_gating, num_pages and kinetics_mix configure "
                             f"memory layers; arch {self.arch!r} has none "
                             f"(use one of {', '.join(MEMORY_OPTION_ARCHITECTURES)})")
        import torch

        from ttmem.layers.paging import SymplecticPaging
        from ttmem.memory import get_rule

        with torch.device("meta"):  # validates every option without allocating the signal's projections
            SymplecticPaging(self.dim, self.heads, self.chunk_size, get_rule(self.rule), **options)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}; got {self.arch!r}")
        for name in ("vocab_size", "dim", "depth", "heads", "window", "segment_len", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.mac_output not in MAC_OUTPUTS:
            raise ValueError(f"mac_output must be one of {', '.join(MAC_OUTPUTS)}; got {self.mac_output!r}")
        if self.mac_memory_input not in MAC_MEMORY_INPUTS:
            raise ValueError(f"mac_memory_input must be one of {', '.join(MAC_MEMORY_INPUTS)}; "
                             f"got {self.mac_memory_input!r}")
        for name in ("persistent_tokens", "conv_kernel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.dim_head is None and self.dim % self.heads != 0:
            raise ValueError(
                f"dim ({self.dim}) must be divisible by heads ({self.heads}) when dim_head is None"
            )
        if self.dim_head is not None and (self.dim_head <= 0 or self.dim_head % 2 != 0):
            raise ValueError(f"dim_head must be a positive even integer or None, got {self.dim_head}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        self.cms_periods = tuple(self.cms_periods)
        if not self.cms_periods or any(not isinstance(p, int) or p <= 0 for p in self.cms_periods):
            raise ValueError(
                f"cms_periods must be a non-empty tuple of positive integers, got {self.cms_periods}"
            )
        allowed = FIXED_RULE_ARCHITECTURES.get(self.arch)
        if allowed is not None and self.memory_rule is not None and self.memory_rule not in allowed:
            raise ValueError(
                f"memory_rule for arch {self.arch!r} must be one of {allowed} or None, "
                f"got {self.memory_rule!r}"
            )
        if not isinstance(self.complexity_args, dict):
            raise ValueError(f"complexity_args must be a table of complexity-signal options, "
                             f"got {self.complexity_args!r}")
        self._check_memory_options()
        mix = self.branch_gate_mix
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix <= 1:
            raise ValueError(f"branch_gate_mix must be a number in [0, 1], got {mix!r}")

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.dim_head if self.dim_head is not None else self.dim // self.heads

    @property
    def rule(self) -> str | None:
        """The memory rule in effect (None for attention-only architectures)."""
        return self.memory_rule if self.memory_rule is not None else DEFAULT_MEMORY_RULES.get(self.arch)

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (validated)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["cms_periods"] = list(self.cms_periods)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys are an error."""
        if not isinstance(data, dict):
            raise TypeError(f"config data must be a dict, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**data)
