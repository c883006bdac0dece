"""Complexity gating, memory pages and kinetics coupling for the neural memory layer (``NeuralMemory(symplectic=…)``).

These are the extensions of the "symplectic gating" fork of titans-pytorch, rebuilt causal and streaming. Per
token t, with c_t the complexity signal of ``complexity.py`` and gates from the layer (step size θ, momentum
keep η, forget α), in this order:

1. Gating (``use_symplectic_gating``, ``use_dmd_gating``): C_t = running max of c over the tokens of t's chunk
   seen so far (one twisted token marks the rest of its chunk), α_t <- α_t (1 − s C_t) with a learned scale
   s = sigmoid(ℓ) in (0, 1) (ℓ starts at 0, s = 0.5). c < 1, so the factor lies in (0, 1]: high complexity slows
   forgetting, the forget rate stays in [0, α] and the memory is never amplified.
2. Pages (``num_pages`` P > 1): the layer holds P pages of ``heads`` heads each (internal heads page-major,
   head h in page h // heads). Only the active page is written: the other pages get θ = 0, α = 0 and η = 0, so
   their weights are exactly unchanged (their momentum restarts from 0 when they become active again).
   All pages are read every token and merged like ordinary heads. At each chunk boundary the layer decides
   the next chunk's page from the chunk just completed: it switches when the chunk's max complexity exceeds
   the threshold (strictly), to
   - ``"sequential"``: (page + 1) mod P;
   - ``"manifold"``: the bucket of the circular mean angle of the manifold state (the phase stage's pair
     angles, radii ignored) over the chunk, floor((θ̄ + π) / 2π · P); may be the current page;
   - ``"hierarchical"``: coarse group floor(cmax · coarse_pages), fine page the angle bucket over
     ``fine_pages`` (or (page + 1) mod fine_pages without a manifold state), target coarse · fine_pages + fine;
     ``hierarchy_mix`` λ blends it with the sequential target as round((1 − λ) seq + λ hier).
   ``page_switch_events`` counts actual page changes (summed over samples), ``page_threshold_crossings`` the
   chunks whose max complexity crossed the threshold, whether or not the page changed.
   Switch budget (``page_switch_budget`` K, ``page_switch_window`` W boundaries): a hard causal cap, at most K
   page changes per sample in any W consecutive chunk boundaries. A change the router asks for is made only
   if the sample changed pages fewer than K times at its previous W − 1 boundaries (carried in the state);
   ``page_switches_blocked`` counts the refused ones. K = 0 pins every sample to page 0.
3. Kinetics (``kinetics_coupling``, ``kinetics_mix`` k): with θ̄_t the running mean step size of t's chunk so
   far, r_t = θ̄_t / (θ̄_t + α_t + ε), α_t <- clamp(α_t (1 − k r_t), 0, 1), θ_t <- θ_t + k (1 − θ_t) r_t. k = 0 leaves
   every gate exactly as it was; inactive pages (θ = α = 0) stay untouched.

A threshold means: switch when the max of c over a chunk exceeds it. The twist score of white noise is about
sqrt(2 / dim) (``complexity.noise_level``), so a raw threshold only means the same thing at the same width;
``page_threshold_units="noise"`` reads the threshold in units of that level (1.5 = 1.5 · sqrt(2 / dim)).

Design choices (where this differs from the fork): decisions at chunk boundaries from tokens already seen
(the fork decided once per call from the whole call's max, so early tokens depended on later ones); running
maxima and means instead of whole-chunk ones; inactive pages' momentum masked (the fork kept adding carried
momentum to them); the forget factor bounded; page changes and threshold crossings counted separately; the
active page and every running statistic live in the ``MemoryState``, so whole == pieces == token by token.
Page decisions are not differentiable; gradients reach s and the signal's projections through α. For the same
reason the switch budget is a hard cap rather than a penalty on the loss (a penalty on switch counts has no
gradient, so it would change nothing but the reported loss).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..memory import MemoryRule, MemoryState
from .complexity import ComplexitySignal, noise_level

ROUTINGS = ("sequential", "manifold", "hierarchical")
THRESHOLD_UNITS = ("raw", "noise")
DEFAULT_THRESHOLDS = {"twist": 0.5, "dmd": 0.4, "noise": 1.5}


def angle_bucket(angle: Tensor, buckets: int) -> Tensor:
    """floor((θ + π) / 2π · buckets) for angles in [−π, π], as integers in [0, buckets − 1]."""
    u = ((angle + math.pi) / (2 * math.pi)).clamp(0.0, 0.999999)
    return (u * buckets).floor().long().clamp(max=buckets - 1)


def route_pages(active: Tensor, cmax: Tensor, angle: Tensor | None, pages: int, routing: str,
                coarse_pages: int = 1, fine_pages: int | None = None, hierarchy_mix: float = 1.0) -> Tensor:
    """The page each sample would switch to (module docstring): active [B] integer, cmax [B], angle [B] or None."""
    sequential = (active + 1) % pages
    if routing == "sequential":
        return sequential
    if routing == "manifold":
        return angle_bucket(angle, pages)
    fine_pages = fine_pages or pages
    coarse = (cmax.clamp(0.0, 0.999999) * coarse_pages).floor().long().clamp(max=coarse_pages - 1)
    fine = angle_bucket(angle, fine_pages) if angle is not None else sequential % fine_pages
    target = (coarse * fine_pages + fine).clamp(max=pages - 1)
    if hierarchy_mix <= 0:
        return sequential
    if hierarchy_mix >= 1:
        return target
    blend = (1 - hierarchy_mix) * sequential.to(cmax.dtype) + hierarchy_mix * target.to(cmax.dtype)
    return torch.round(blend).long().clamp(0, pages - 1)


def _check_mix(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class SymplecticPaging(nn.Module):
    """The gating, paging and kinetics of a ``NeuralMemory`` (module docstring). ``heads``: the user's heads
    per page; ``complexity``: keyword arguments of ``ComplexitySignal`` (its stages)."""

    def __init__(self, dim: int, heads: int, chunk_size: int, rule: MemoryRule, *,
                 use_symplectic_gating: bool = False, use_dmd_gating: bool = False,
                 combine_symplectic_and_dmd: bool = False, num_pages: int = 1,
                 symplectic_page_threshold: float | None = None, page_threshold_units: str = "raw",
                 page_routing: str = "sequential", coarse_pages: int = 1, fine_pages: int | None = None,
                 hierarchy_mix: float = 1.0, kinetics_coupling: bool = False, kinetics_mix: float = 0.0,
                 kinetics_eps: float = 1e-6, page_switch_budget: int | None = None, page_switch_window: int = 8,
                 complexity: dict[str, Any] | None = None):
        super().__init__()
        if isinstance(num_pages, bool) or not isinstance(num_pages, int) or num_pages < 1:
            raise ValueError(f"num_pages must be an integer >= 1, got {num_pages!r}")
        if page_routing not in ROUTINGS:
            raise ValueError(f"page_routing must be one of {ROUTINGS}, got {page_routing!r}")
        if page_threshold_units not in THRESHOLD_UNITS:
            raise ValueError(f"page_threshold_units must be one of {THRESHOLD_UNITS}, got {page_threshold_units!r}")
        gating = use_symplectic_gating or use_dmd_gating
        if use_symplectic_gating and use_dmd_gating and not combine_symplectic_and_dmd:
            raise ValueError("use_symplectic_gating with use_dmd_gating needs combine_symplectic_and_dmd=True "
                             "(the signal is then the even blend of the twist and DMD scores)")
        if gating and not rule.forgetting:
            raise ValueError(f"complexity gating modulates the forget gate; rule {rule.name!r} has none")
        if num_pages > 1 and not gating:
            raise ValueError("num_pages > 1 needs use_symplectic_gating or use_dmd_gating (the switch signal); "
                             "for plain extra heads raise heads instead")
        if symplectic_page_threshold is not None and (
                isinstance(symplectic_page_threshold, bool) or not isinstance(symplectic_page_threshold, (int, float))
                or not math.isfinite(symplectic_page_threshold)):
            raise ValueError(f"symplectic_page_threshold must be a finite number or None, "
                             f"got {symplectic_page_threshold!r}")
        if page_threshold_units == "noise" and not use_symplectic_gating:
            raise ValueError("page_threshold_units='noise' is the twist score's noise level; it needs "
                             "use_symplectic_gating")
        fine_pages = num_pages if fine_pages is None else fine_pages
        if page_routing == "hierarchical":
            for name, value in (("coarse_pages", coarse_pages), ("fine_pages", fine_pages)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            if coarse_pages * fine_pages != num_pages:
                raise ValueError(f"coarse_pages × fine_pages must equal num_pages: {coarse_pages} × {fine_pages} "
                                 f"!= {num_pages}")
        if page_switch_budget is not None:
            budget = page_switch_budget
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
                raise ValueError(f"page_switch_budget must be an integer >= 0 or None, got {page_switch_budget!r}")
            if num_pages < 2:
                raise ValueError("page_switch_budget caps page changes; it needs num_pages > 1")
        if isinstance(page_switch_window, bool) or not isinstance(page_switch_window, int) or page_switch_window < 1:
            raise ValueError(f"page_switch_window must be an integer >= 1, got {page_switch_window!r}")
        self.hierarchy_mix = _check_mix("hierarchy_mix", hierarchy_mix)
        self.kinetics_mix = _check_mix("kinetics_mix", kinetics_mix)
        if isinstance(kinetics_eps, bool) or not isinstance(kinetics_eps, (int, float)) or not kinetics_eps > 0:
            raise ValueError(f"kinetics_eps must be a number > 0, got {kinetics_eps!r}")
        if complexity and not gating:
            raise ValueError("complexity options configure the gating signal; turn on use_symplectic_gating or "
                             "use_dmd_gating")

        self.dim, self.heads, self.pages, self.chunk_size = dim, heads, num_pages, chunk_size
        self.routing, self.coarse_pages, self.fine_pages = page_routing, coarse_pages, fine_pages
        self.kinetics, self.kinetics_eps = bool(kinetics_coupling), float(kinetics_eps)
        self.switch_budget, self.switch_window = page_switch_budget, page_switch_window
        self.signal = ComplexitySignal(dim, twist=use_symplectic_gating, dmd=use_dmd_gating,
                                       **(complexity or {})) if gating else None
        if page_routing == "manifold" and num_pages > 1 and not (self.signal and self.signal.has_manifold_state):
            raise ValueError("page_routing='manifold' keys pages on the manifold state; it needs the phase stage "
                             "(complexity={'phase_mix': > 0})")
        if use_symplectic_gating:
            self.symplectic_scale_logit = nn.Parameter(torch.zeros(()))
        if use_dmd_gating:
            self.dmd_scale_logit = nn.Parameter(torch.zeros(()))
        if symplectic_page_threshold is None:
            key = "noise" if page_threshold_units == "noise" else ("dmd" if use_dmd_gating else "twist")
            symplectic_page_threshold = DEFAULT_THRESHOLDS[key]
        self.threshold, self.threshold_units = float(symplectic_page_threshold), page_threshold_units
        if num_pages > 1:
            self.register_buffer("page_switch_events", torch.zeros((), dtype=torch.long))
            self.register_buffer("page_threshold_crossings", torch.zeros((), dtype=torch.long))
        if page_switch_budget is not None:
            self.register_buffer("page_switches_blocked", torch.zeros((), dtype=torch.long))

    @property
    def active(self) -> bool:
        """Whether anything changes the layer (otherwise the layer drops this module)."""
        return self.signal is not None or self.kinetics

    @property
    def raw_threshold(self) -> float:
        """The threshold on the signal itself."""
        return self.threshold * (noise_level(self.dim) if self.threshold_units == "noise" else 1.0)

    def scale(self) -> Tensor:
        """s in (0, 1): the mean of the enabled signals' scales."""
        logits = [p for p in (getattr(self, "symplectic_scale_logit", None), getattr(self, "dmd_scale_logit", None))
                  if p is not None]
        return sum(torch.sigmoid(p) for p in logits) / len(logits)

    def _decide(self, page: Tensor, cmax: Tensor, phase: Tensor | None,
                history: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The page of the next chunk and the updated switch history [B, W − 1] (budget only); the counters."""
        angle = None if phase is None else torch.atan2(phase[:, 1], phase[:, 0])
        crossed = cmax > self.raw_threshold
        target = route_pages(page, cmax, angle, self.pages, self.routing, self.coarse_pages, self.fine_pages,
                             self.hierarchy_mix)
        wanted = crossed & (target != page)
        allowed = wanted
        if history is not None:
            allowed = wanted & (history.sum(1) < self.switch_budget)
        new = torch.where(allowed, target, page)
        with torch.no_grad():
            self.page_threshold_crossings += crossed.sum()
            self.page_switch_events += allowed.sum()
            if history is not None:
                self.page_switches_blocked += (wanted & ~allowed).sum()
                history = torch.cat([history, allowed.long().unsqueeze(1)], 1)[:, 1:]
        return new, history

    def forward(self, x: Tensor, gates: dict[str, Tensor], state: MemoryState) -> tuple[dict[str, Tensor], dict]:
        """Gates [B, H, T] by name -> the modulated gates, and the state fields to carry (``MemoryState``)."""
        b, t, _ = x.shape
        h = gates["lr"].shape[1]
        carry: dict[str, Any] = {}
        c = phase = None
        if self.signal is not None:
            c = self.signal(x, state.signal_inputs)
            if self.pages > 1 and self.signal.has_manifold_state and self.routing != "sequential":
                phase = torch.stack([c.phase_angle.cos().sum(-1), c.phase_angle.sin().sum(-1)], -1).detach()
            c = c.signal
            seen = x if state.signal_inputs is None else torch.cat([state.signal_inputs, x], dim=1)
            carry["signal_inputs"] = seen[:, max(0, seen.shape[1] - self.signal.context):]
            scale = self.scale()
        zeros = x.new_zeros(b)
        run_max = state.chunk_complexity if state.chunk_complexity is not None else zeros
        run_phase = state.chunk_phase if state.chunk_phase is not None else x.new_zeros(b, 2)
        lr_sum = state.chunk_lr_sum if state.chunk_lr_sum is not None else x.new_zeros(b, h)
        page = state.active_page if state.active_page is not None else torch.zeros(b, dtype=torch.long,
                                                                                   device=x.device)
        history = state.switch_history
        if self.switch_budget is not None and history is None:
            history = torch.zeros(b, self.switch_window - 1, dtype=torch.long, device=x.device)
        head_page = torch.arange(h, device=x.device) // self.heads
        lr, forget, eta = gates["lr"], gates.get("forget"), gates.get("momentum")
        parts: dict[str, list[Tensor]] = {"lr": [], "forget": [], "momentum": []}
        offset, start = state.signal_offset, 0
        while start < t:
            n = min(self.chunk_size - offset, t - start)
            seg = slice(start, start + n)
            lr_s = lr[..., seg]
            forget_s = None if forget is None else forget[..., seg]
            eta_s = None if eta is None else eta[..., seg]
            if c is not None:
                running = torch.maximum(run_max.unsqueeze(1), torch.cummax(c[:, seg], dim=1).values)  # [B, n]
                forget_s = forget_s * (1 - scale * running).unsqueeze(1)
                run_max = running[:, -1]
                if phase is not None:
                    run_phase = run_phase + phase[:, seg].sum(1)
            if self.pages > 1:
                mask = (head_page == page.unsqueeze(1)).to(lr.dtype).unsqueeze(-1)  # [B, H, 1]
                lr_s = lr_s * mask
                forget_s = None if forget_s is None else forget_s * mask
                eta_s = None if eta_s is None else eta_s * mask
            if self.kinetics:
                cumulative = lr_sum.unsqueeze(-1) + torch.cumsum(lr_s, dim=-1)
                count = offset + torch.arange(1, n + 1, device=x.device, dtype=lr.dtype)
                mean_lr = cumulative / count
                alpha = torch.zeros_like(lr_s) if forget_s is None else forget_s
                progress = mean_lr / (mean_lr + alpha + self.kinetics_eps)
                if forget_s is not None:
                    forget_s = (alpha * (1 - self.kinetics_mix * progress)).clamp(0.0, 1.0)
                lr_s = lr_s + self.kinetics_mix * (1 - lr_s) * progress
                lr_sum = cumulative[..., -1]
            parts["lr"].append(lr_s)
            if forget_s is not None:
                parts["forget"].append(forget_s)
            if eta_s is not None:
                parts["momentum"].append(eta_s)
            offset, start = offset + n, start + n
            if offset == self.chunk_size:  # boundary: decide the next chunk's page, restart the running stats
                if self.pages > 1:
                    page, history = self._decide(page, run_max.detach(), run_phase if phase is not None else None,
                                                 history)
                offset, run_max, run_phase, lr_sum = 0, zeros, torch.zeros_like(run_phase), torch.zeros_like(lr_sum)
        new_gates = dict(gates)
        for name, pieces in parts.items():
            if pieces:
                new_gates[name] = torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]
        carry["signal_offset"] = offset
        if c is not None:
            carry["chunk_complexity"] = run_max
        if phase is not None:
            carry["chunk_phase"] = run_phase
        if self.kinetics:
            carry["chunk_lr_sum"] = lr_sum
        if self.pages > 1:
            carry["active_page"] = page
        if history is not None:
            carry["switch_history"] = history
        return new_gates, carry

    def extra_repr(self) -> str:
        budget = "" if self.switch_budget is None else f", switch_budget={self.switch_budget}/{self.switch_window}"
        return (f"pages={self.pages}, routing={self.routing!r}, threshold={self.threshold} "
                f"({self.threshold_units}), kinetics_mix={self.kinetics_mix if self.kinetics else None}{budget}")
