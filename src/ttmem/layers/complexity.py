"""Causal complexity signals of an input stream: the twist score, its optional stages, and the DMD score.

A complexity signal maps x [B, T, D] to c [B, T] in [0, 1). ``ComplexitySignal`` runs, in this order:

1. optional gated projection (``gated``): x -> g ⊙ m with m = relu(z) and g = sigmoid(a) ("soft") or 1[a > τ]
   with the sigmoid's gradient ("hard", straight-through); a, z per coordinate (``diag``) or from D × D
   linears; optional sparse routing keeps the k largest a (``top_k``, or per token
   k_t = ceil(tanh(mean |a_t|) · ratio · D) with ``adaptive_topk_ratio``) and zeroes g and m elsewhere;
2. twist score: q_t = normalize(W_q x_t), k_t = normalize(W_k x_t), per coordinate the signed area
   μ_t[i] = q_t[i] k_{t−1}[i] − q_{t−1}[i] k_t[i] of consecutive points in the plane (q[i], k[i]),
   c_t = tanh(‖μ_t‖₂), c_0 = 0. Range [0, tanh 2]. It is 0 for a constant input, for x_t a multiple of x_{t−1},
   and for W_q = W_k. Despite the name ("symplectic", "moment map") it is the ℓ2 norm of per-plane cross
   products, not a wedge product; on white noise it is about sqrt(2 / D), so its scale is set by the width
   (see ``noise_level``);
3. phase blend (``phase_mix`` φ): m planar pairs p_{t,j} of a projection D -> 2m, ph_t = mean_j |∠(p_{t−1,j},
   p_{t,j})| / π, c <- (1 − φ) c + φ ph. The pairs' radii and angles are the "manifold state";
4. codebook blend (``codebook_mix`` κ): π_t = softmax(W_c x_t / τ) over K codes (optionally its top-k,
   renormalised), tv_t = ½ ‖π_t − π_{t−1}‖₁, c <- (1 − κ) c + κ tv;
5. quorum filter (``quorum_mix`` ρ): the trailing mean l_t of c over the last w positions (positions before the
   sequence count as 0), Q_t = sigmoid((l_t − θ_q) / T_q), optionally a budget that keeps Q_t only where it is
   among the ceil(β L) largest of the last L values of Q (``budget_topk_ratio`` β, ``budget_window`` L),
   c <- c ⊙ ((1 − ρ) + ρ Q).

``dmd_score`` is the one-step linear-predictor residual over a trailing window: per token t, snapshots
X = [x_{t−L+1} … x_{t−1}], Y = [x_{t−L+2} … x_t], e_t = mean((Y − P_U Y P_V)²) with P_U, P_V the projections
onto X's column and row spaces (the full-rank DMD prediction U Ã Uᵀ X), score tanh(e_t). It measures
something only when the window has more pairs than dimensions (L − 1 > D); otherwise every column of Y but the
last lies in span(X) and the score is near 0.

Design choices:
- Causal everywhere. The signal at t reads inputs t − ``context`` .. t only (trailing windows instead of the
  centred quorum window, a trailing budget window instead of a whole-sequence top-k, a trailing DMD window
  instead of one over the whole call). ``forward(x, past)`` takes the last ``context`` inputs before x, so
  running a stream whole, in pieces or token by token gives the same signal.
- DMD is computed without gradients (an SVD's gradient is undefined at repeated singular values); it enters
  a memory through a learned scale only.
- The result is a typed record (``ComplexityRecord``); diagnostics that a stage does not compute are None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GATE_MODES = ("soft", "hard")


@dataclass
class ComplexityRecord:
    """Per-token signal and diagnostics, all [B, T] unless noted (None when the stage is off)."""

    signal: Tensor                       # c in [0, 1)
    twist: Tensor | None = None          # the twist score before any blend
    moment_map: Tensor | None = None     # μ [B, T, D] (row 0 zero)
    phase: Tensor | None = None          # phase score ph
    phase_radius: Tensor | None = None   # manifold state: pair radii [B, T, m]
    phase_angle: Tensor | None = None    # ... pair angles in (−π, π] [B, T, m]
    codebook: Tensor | None = None       # codebook transition score tv
    quorum: Tensor | None = None         # quorum factor Q (after the budget)
    sparse_k: Tensor | None = None       # kept coordinates per token (gated top-k)
    dmd: Tensor | None = None            # DMD score tanh(e)

    def last(self, n: int) -> ComplexityRecord:
        """The record of the last n positions."""
        return ComplexityRecord(**{k: None if v is None else v[:, -n:] for k, v in vars(self).items()})


def noise_level(dim: int) -> float:
    """The twist score's typical value on white noise at width ``dim`` with random projections: sqrt(2 / dim)."""
    return math.sqrt(2.0 / dim)


def _previous(x: Tensor) -> Tensor:
    """x shifted one step later along dim 1, the first row repeated (so a first-position difference is 0)."""
    return torch.cat([x[:, :1], x[:, :-1]], dim=1)


def twist_score(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """(c [B, T], μ [B, T, D]) from unit (or zero) projections q, k [B, T, D]; c_0 = 0."""
    mu = q * _previous(k) - _previous(q) * k
    return torch.tanh(mu.norm(dim=-1)), mu


def phase_score(pairs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(ph [B, T], radius, angle [B, T, m]) from planar pairs [B, T, m, 2]; ph_0 = 0, zero-radius pairs give 0."""
    radius = pairs.norm(dim=-1)
    angle = torch.atan2(pairs[..., 1], pairs[..., 0])
    unit = pairs / radius.clamp(min=torch.finfo(pairs.dtype).tiny).unsqueeze(-1)
    prev = _previous(unit)
    cross = prev[..., 0] * unit[..., 1] - prev[..., 1] * unit[..., 0]
    dot = (prev * unit).sum(-1).clamp(-1.0, 1.0)
    real = (radius > 0) & (_previous(radius) > 0)
    step = torch.where(real, torch.atan2(cross, dot).abs() / math.pi, torch.zeros_like(dot))
    return step.mean(-1), radius, angle


def total_variation_score(probs: Tensor) -> Tensor:
    """tv_t = ½ ‖π_t − π_{t−1}‖₁ for distributions [B, T, K]; tv_0 = 0."""
    return 0.5 * (probs - _previous(probs)).abs().sum(-1)


def trailing_mean(c: Tensor, window: int) -> Tensor:
    """l_t = (1 / w) Σ_{t−w<j≤t} c_j over [B, T], positions before the sequence counting as 0."""
    padded = F.pad(c, (window - 1, 0))
    return padded.unfold(1, window, 1).mean(-1)


def trailing_budget(score: Tensor, ratio: float, window: int) -> Tensor:
    """1 where score_t is among the ceil(ratio · window) largest of its last ``window`` values (ties keep), else 0."""
    keep = max(1, min(window, math.ceil(ratio * window)))
    padded = F.pad(score, (window - 1, 0), value=float("-inf"))
    past = padded.unfold(1, window, 1)                    # [B, T, window], the token itself last
    above = (past > score.unsqueeze(-1)).sum(-1)          # how many recent values beat it
    return (above < keep).to(score.dtype)


def dmd_score(x: Tensor, window: int, rtol: float = 1e-6) -> Tensor:
    """tanh of the one-step linear-predictor residual over the trailing window of each token (module docstring).

    x [B, T, D] -> [B, T]; no gradient. Near the sequence start the window holds the tokens seen so far
    (score 0 with fewer than two)."""
    with torch.no_grad():
        b, t, d = x.shape
        pairs = window - 1
        padded = F.pad(x, (0, 0, pairs, 0))                                       # [B, pairs + T, D]
        frames = padded.unfold(1, window, 1)                                      # [B, T, D, window]
        real = F.pad(torch.ones(b, t, dtype=x.dtype, device=x.device), (pairs, 0)).unfold(1, window, 1)
        pair_real = real[..., :-1] * real[..., 1:]                                # [B, T, pairs]
        snap_x = frames[..., :-1] * pair_real.unsqueeze(-2)
        snap_y = frames[..., 1:] * pair_real.unsqueeze(-2)
        u, s, vh = torch.linalg.svd(snap_x, full_matrices=False)
        rank = (s > rtol * s[..., :1]) & (s > 0)
        u = u * rank.unsqueeze(-2)
        v = vh.mT * rank.unsqueeze(-2)
        pred = u @ (u.mT @ snap_y @ v) @ v.mT
        count = pair_real.sum(-1) * d
        err = (snap_y - pred).pow(2).sum((-2, -1)) / count.clamp(min=1)
        return torch.tanh(err)


class GatedProjection(nn.Module):
    """x -> g ⊙ relu(z) with g soft or hard (straight-through), optionally sparse (module docstring, stage 1)."""

    def __init__(self, dim: int, diag: bool, gate_mode: str, gate_threshold: float, top_k: int | None,
                 adaptive_topk_ratio: float | None, adaptive_topk_min_k: int):
        super().__init__()
        self.dim, self.diag, self.gate_mode, self.gate_threshold = dim, diag, gate_mode, gate_threshold
        self.top_k, self.ratio, self.min_k = top_k, adaptive_topk_ratio, adaptive_topk_min_k
        if diag:
            self.gate_weight = nn.Parameter(torch.ones(dim))
            self.gate_bias = nn.Parameter(torch.zeros(dim))
            self.magnitude_weight = nn.Parameter(torch.ones(dim))
            self.magnitude_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.gate = nn.Linear(dim, dim)
            self.magnitude = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(gated x [B, T, D], kept coordinates per token [B, T] or None without sparse routing)."""
        if self.diag:
            a = x * self.gate_weight + self.gate_bias
            z = x * self.magnitude_weight + self.magnitude_bias
        else:
            a, z = self.gate(x), self.magnitude(x)
        soft = torch.sigmoid(a)
        if self.gate_mode == "soft":
            g = soft
        else:  # hard forward value, the sigmoid's gradient
            g = (a > self.gate_threshold).to(x.dtype) + (soft - soft.detach())  # exactly the step forward
        m = F.relu(z)
        kept = None
        if self.top_k is not None or self.ratio is not None:
            if self.top_k is not None:
                kept = torch.full(a.shape[:-1], max(min(self.min_k, self.dim), min(self.top_k, self.dim)),
                                  dtype=torch.long, device=x.device)
            else:
                kept = torch.ceil(torch.tanh(a.detach().abs().mean(-1)) * self.ratio * self.dim).long()
                kept = kept.clamp(min=self.min_k, max=self.dim)
            rank = torch.argsort(torch.argsort(a.detach(), dim=-1, descending=True, stable=True), dim=-1)
            mask = (rank < kept.unsqueeze(-1)).to(x.dtype)
            g, m = g * mask, m * mask
            kept = kept.to(x.dtype)
        return g * m, kept


def _check_unit(name: str, value: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not (0 < value <= 1 if low_open else 0 <= value <= 1):
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class ComplexitySignal(nn.Module):
    """The causal complexity signal of a stream (module docstring): twist score with optional stages, the DMD
    score, or their even blend (``twist`` and ``dmd``). All options default to off / the fork's defaults."""

    def __init__(self, dim: int, *, twist: bool = True, dmd: bool = False, dmd_window: int = 64,
                 gated: bool = False, diag: bool = False, gate_mode: str = "hard", gate_threshold: float = 0.0,
                 top_k: int | None = None, adaptive_topk_ratio: float | None = None, adaptive_topk_min_k: int = 1,
                 phase_mix: float = 0.0, phase_pairs: int | None = None,
                 codebook_mix: float = 0.0, codebook_size: int = 16, codebook_temperature: float = 0.1,
                 codebook_topk: int | None = None,
                 quorum_mix: float = 0.0, quorum_window: int = 3, quorum_threshold: float = 0.5,
                 quorum_temperature: float = 0.1, budget_topk_ratio: float | None = None, budget_window: int = 16):
        super().__init__()
        _check_int("dim", dim, 1)
        if not (twist or dmd):
            raise ValueError("a complexity signal needs twist=True, dmd=True or both")
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {gate_mode!r}")
        if (top_k is not None or adaptive_topk_ratio is not None) and not gated:
            raise ValueError("top_k and adaptive_topk_ratio select coordinates of the gated projection; set gated=True")
        if top_k is not None and adaptive_topk_ratio is not None:
            raise ValueError("give top_k or adaptive_topk_ratio, not both")
        if top_k is not None:
            _check_int("top_k", top_k, 1)
        if adaptive_topk_ratio is not None:
            _check_unit("adaptive_topk_ratio", adaptive_topk_ratio, low_open=True)
        _check_int("adaptive_topk_min_k", adaptive_topk_min_k, 1)
        for name, value in (("phase_mix", phase_mix), ("codebook_mix", codebook_mix), ("quorum_mix", quorum_mix)):
            _check_unit(name, value)
        if phase_pairs is not None:
            _check_int("phase_pairs", phase_pairs, 1)
        _check_int("codebook_size", codebook_size, 2)
        _check_positive("codebook_temperature", codebook_temperature)
        if codebook_topk is not None and not (isinstance(codebook_topk, int) and 1 <= codebook_topk <= codebook_size):
            raise ValueError(f"codebook_topk must be an integer in [1, codebook_size={codebook_size}], "
                             f"got {codebook_topk!r}")
        _check_int("quorum_window", quorum_window, 1)
        _check_positive("quorum_temperature", quorum_temperature)
        if not isinstance(quorum_threshold, (int, float)) or not math.isfinite(quorum_threshold):
            raise ValueError(f"quorum_threshold must be a finite number, got {quorum_threshold!r}")
        if budget_topk_ratio is not None:
            if quorum_mix == 0:
                raise ValueError("budget_topk_ratio filters the quorum factor; it needs quorum_mix > 0")
            _check_unit("budget_topk_ratio", budget_topk_ratio, low_open=True)
        _check_int("budget_window", budget_window, 1)
        _check_int("dmd_window", dmd_window, 2)
        if not twist and (gated or phase_mix or codebook_mix or quorum_mix):
            raise ValueError("the gated projection, phase, codebook and quorum stages refine the twist score; "
                             "they need twist=True")

        self.dim, self.use_twist, self.use_dmd, self.dmd_window = dim, twist, dmd, dmd_window
        self.phase_mix, self.codebook_mix, self.quorum_mix = float(phase_mix), float(codebook_mix), float(quorum_mix)
        self.codebook_temperature, self.codebook_topk = codebook_temperature, codebook_topk
        self.quorum_window, self.quorum_threshold = quorum_window, quorum_threshold
        self.quorum_temperature = quorum_temperature
        self.budget_ratio, self.budget_window = budget_topk_ratio, budget_window
        self.phase_pairs = phase_pairs or max(1, dim // 2)
        if twist:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_k = nn.Linear(dim, dim, bias=False)
        self.gate = GatedProjection(dim, diag, gate_mode, gate_threshold, top_k, adaptive_topk_ratio,
                                    adaptive_topk_min_k) if gated else None
        if self.phase_mix > 0:
            self.to_phase = nn.Linear(dim, 2 * self.phase_pairs, bias=False)
            nn.init.normal_(self.to_phase.weight, std=0.02)
        if self.codebook_mix > 0:
            self.to_codes = nn.Linear(dim, codebook_size, bias=False)
            nn.init.normal_(self.to_codes.weight, std=0.02)

    @property
    def has_manifold_state(self) -> bool:
        return self.phase_mix > 0

    @property
    def context(self) -> int:
        """How many earlier inputs the signal at t reads (the streaming history to keep)."""
        need = 1 if self.use_twist else 0
        if self.quorum_mix > 0:
            need = self.quorum_window + (self.budget_window - 1 if self.budget_ratio is not None else 0)
        if self.use_dmd:
            need = max(need, self.dmd_window - 1)
        return need

    def forward(self, x: Tensor, past: Tensor | None = None) -> ComplexityRecord:
        """The record for x [B, T, D]; ``past`` [B, P, D] (P <= ``context``) are the inputs just before x,
        fewer only at the start of the stream."""
        t = x.shape[1]
        if past is not None and past.shape[1]:
            x = torch.cat([past, x], dim=1)
        record = self._twist_chain(x) if self.use_twist else None
        if self.use_dmd:
            dmd = dmd_score(x, self.dmd_window)
            if record is None:
                record = ComplexityRecord(signal=dmd, dmd=dmd)
            else:
                record.signal, record.dmd = 0.5 * record.signal + 0.5 * dmd, dmd
        return record.last(t)

    def _twist_chain(self, x: Tensor) -> ComplexityRecord:
        sparse_k = None
        if self.gate is not None:
            x, sparse_k = self.gate(x)
        c, mu = twist_score(F.normalize(self.to_q(x), dim=-1), F.normalize(self.to_k(x), dim=-1))
        record = ComplexityRecord(signal=c, twist=c, moment_map=mu, sparse_k=sparse_k)
        if self.phase_mix > 0:
            pairs = self.to_phase(x).unflatten(-1, (self.phase_pairs, 2))
            record.phase, record.phase_radius, record.phase_angle = phase_score(pairs)
            c = (1 - self.phase_mix) * c + self.phase_mix * record.phase
        if self.codebook_mix > 0:
            probs = torch.softmax(self.to_codes(x) / self.codebook_temperature, dim=-1)
            if self.codebook_topk is not None and self.codebook_topk < probs.shape[-1]:
                top = probs.topk(self.codebook_topk, dim=-1)
                probs = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
                probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-8)
            record.codebook = total_variation_score(probs)
            c = (1 - self.codebook_mix) * c + self.codebook_mix * record.codebook
        if self.quorum_mix > 0:
            local = trailing_mean(c, self.quorum_window)
            quorum = torch.sigmoid((local - self.quorum_threshold) / self.quorum_temperature)
            if self.budget_ratio is not None:
                quorum = quorum * trailing_budget(quorum.detach(), self.budget_ratio, self.budget_window)
            record.quorum = quorum
            c = c * ((1 - self.quorum_mix) + self.quorum_mix * quorum)
        record.signal = c
        return record
