"""Memory rules: the four MIRAS choices (architecture, objective, retention, learner) as one frozen config.

Every named model is a preset here, a few lines of data; a new rule is a new combination, not a new engine.

Learner fields:
- ``momentum``: keep a momentum S (Titans' surprise); gates η_t come from the caller.
- ``forgetting``: use the forget gate α_t (callers may omit it, meaning α = 0).
- ``window`` / ``window_decay``: ATLAS Omega rule — the gradient at t is Σ_{lag < window} decay^lag ∇ℓ_{t−lag},
  all taken at the chunk-start weights (the window reaches into earlier chunks and earlier calls).
- ``newton_schulz_steps``: Muon / ATLAS-style orthogonalised momentum, 0 = off. As in Muon, the orthogonalised
  momentum is what the weights see and the momentum buffer itself stays raw: at each chunk start the carried
  momentum enters the chunk's weight updates as NS(S), while S keeps accumulating gradients unorthogonalised.
  Feeding NS(S) back into the buffer makes the recurrence chaotic (rounding noise in near-null directions grows
  by the iteration's slope at zero at every boundary); for the same reason the engine uses the classical cubic
  iteration, see ``newton_schulz.py``.
- ``per_token``: update exactly token by token whatever chunk size is asked (DeltaNet, θMN); the chunk size then
  only blocks the computation.
- ``forget_first``: where the forget gate acts relative to the token's gradient. False (Titans, MIRAS, ATLAS):
  the gradient is taken at W_{t−1} and forgetting acts alongside the step, W_t = (1 − α_t) W_{t−1} − θ_t ∇ℓ(W_{t−1}).
  True (Gated DeltaNet): the memory is decayed first and the gradient taken on the decayed memory,
  W_t = (1 − α_t) W_{t−1} − θ_t ∇ℓ((1 − α_t) W_{t−1}); for a linear ℓ2 memory with α the keep factor of the
  paper this is S_t = α_t S_{t−1} + β_t (v_t − α_t S_{t−1} k_t) k_tᵀ. Only rules that run as the exact per-token
  delta rule (linear, ℓ2, no momentum, window or retention view) accept it: with gradients at a chunk's start
  weights there is no per-token decayed memory to differentiate at.

``docs/rules.md`` gives each preset's source equation and every deliberate deviation from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .architectures import MemoryArchitecture
from .objectives import Objective
from .retention import Retention


@dataclass(frozen=True)
class MemoryRule:
    name: str
    architecture: MemoryArchitecture = field(default_factory=MemoryArchitecture)
    objective: Objective = field(default_factory=Objective)
    retention: Retention = field(default_factory=Retention)
    momentum: bool = False
    forgetting: bool = False
    window: int = 1
    window_decay: float = 1.0
    newton_schulz_steps: int = 0
    per_token: bool = False
    zero_init: bool = False  # initial weights zero (linear presets) instead of a fixed-seed normal
    forget_first: bool = False  # decay, then take the gradient on the decayed memory (Gated DeltaNet)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"rule window must be >= 1, got {self.window}")
        if not 0.0 <= self.window_decay <= 1.0:
            raise ValueError(f"rule window_decay must be in [0, 1], got {self.window_decay}")
        if self.newton_schulz_steps < 0:
            raise ValueError(f"rule newton_schulz_steps must be >= 0, got {self.newton_schulz_steps}")
        if self.newton_schulz_steps and not self.momentum:
            raise ValueError("rule newton_schulz_steps needs momentum=True (it orthogonalises the momentum)")
        if self.forget_first and not self.exact_delta_rule:
            raise ValueError("rule forget_first needs the exact per-token delta rule: per_token=True, a linear "
                             "architecture, the l2 objective, no momentum, window 1 and no retention view or anchor")

    @property
    def exact_delta_rule(self) -> bool:
        """The rule is the per-token delta rule on a linear ℓ2 memory (the WY / UT fast path can run it)."""
        return (self.per_token and self.architecture.kind == "linear" and self.objective.kind == "l2"
                and not self.momentum and self.window == 1 and not self.retention.has_view
                and self.retention.anchor == 0)

    def initial_weights(self, heads: int, dim_k: int, dim_v: int, **kwargs):
        """Initial weights (or accumulator, for rules with a retention view) [heads, out, in] per layer."""
        return self.architecture.initial_weights(heads, dim_k, dim_v, zero=self.zero_init, **kwargs)

    def replace(self, **changes) -> MemoryRule:
        return replace(self, **changes)


_MLP = MemoryArchitecture(kind="mlp", depth=2, expansion=4.0, activation="gelu", residual_norm=True)
_LINEAR = MemoryArchitecture(kind="linear")

RULES: dict[str, MemoryRule] = {
    "titans": MemoryRule("titans", _MLP, Objective("l2"), momentum=True, forgetting=True),
    # Titans with a matrix memory (the paper's L_M = 1): chunked gradient descent with momentum and forgetting
    "titans_linear": MemoryRule("titans_linear", _LINEAR, Objective("l2"), momentum=True, forgetting=True,
                                zero_init=True),
    "moneta": MemoryRule("moneta", _MLP, Objective("lp", p=3.0), Retention("lq", q=4.0), forgetting=True),
    "yaad": MemoryRule("yaad", _MLP, Objective("huber"), forgetting=True),
    "memora": MemoryRule("memora", _MLP, Objective("l2"), Retention("softmax"), forgetting=True),
    "delta": MemoryRule("delta", _LINEAR, Objective("l2"), per_token=True, zero_init=True),
    "gated_delta": MemoryRule("gated_delta", _LINEAR, Objective("l2"), forgetting=True, per_token=True,
                              zero_init=True, forget_first=True),
    "linear_attention": MemoryRule("linear_attention", _LINEAR, Objective("dot"), zero_init=True),
    "theta": MemoryRule("theta", _LINEAR, Objective("l2"), per_token=True, zero_init=True),
    "theta_lowrank": MemoryRule("theta_lowrank", MemoryArchitecture(kind="lowrank", rank=16), Objective("l2"),
                                per_token=True),
    "atlas": MemoryRule("atlas", _MLP, Objective("l2"), momentum=True, forgetting=True, window=4,
                        newton_schulz_steps=5),
}


def get_rule(rule: str | MemoryRule) -> MemoryRule:
    """A preset by name, or the rule object itself."""
    if isinstance(rule, MemoryRule):
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"rule must be a preset name or a MemoryRule, got {type(rule).__name__}")
    if rule not in RULES:
        raise ValueError(f"unknown memory rule {rule!r}; presets: {', '.join(sorted(RULES))}")
    return RULES[rule]
