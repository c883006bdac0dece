"""M3, multi-scale momentum Muon (Nested Learning, Algorithm 1), in a stable default form and literally.

Both forms keep the paper's structure. Per matrix parameter, with gradient ``g_t`` at step ``t`` (1-based)
and chunk length ``f``:

    M1 ← β1 M1 + (1 − β1) g_t                      fast momentum, every step
    every f steps (t ≡ 0 mod f), after the update:
        M2 ← β3 M2 + (1 − β3) · mean(g over the last f steps)     slow momentum
        O2 = orthogonalised M2 / (1 − β3^k)          k = number of slow updates so far
    θ  ← θ − lr · U(O1 + α O2, V)                    O1 = orthogonalised M1 / (1 − β1^t)

with an adaptive second moment ``V`` inside ``U``. ``O2`` is computed from the gradients of chunk ``k``
and used for the ``f`` steps of chunk ``k + 1`` (zero during the first chunk), as in Algorithm 1; sums
``M ← M + β g`` of Algorithm 1 are replaced by bias-corrected exponential averages (a sum never forgets,
so the "fast" memory would not be fast). The variants differ only in how ``U`` combines the
orthogonalised directions with ``V``.

``variant="paper"``: the literal rule, ``V ← β2 V + (1 − β2) g²`` and

    θ ← θ − lr · (orth(M̂1) + α orth(M̂2)) / (√V̂ + ε),   orth(M) = NS(M) · ‖M‖_F / ‖NS(M)‖_F

(Newton–Schulz direction rescaled to the momentum's Frobenius norm, so the ratio is dimensionless).
**It is unstable on uneven gradients.** Newton–Schulz spreads a matrix's magnitude over all its entries,
while ``√V̂`` is entrywise: wherever a gradient entry is orders of magnitude below the matrix's typical
entry, ``orth(M̂)_ij / √V̂_ij`` is huge. Measured on ``mac-tiny`` (README, "Nested Learning optimizers"):
the first step at lr 1e-2 moved single weights of a SwiGLU output projection by about 1.6e3, and over lr 1e-2
to 1e-1 the rule ended barely below a uniform guess on that model. At lr 1e-3 it trains, but its usable range of
learning rates is narrow.

**The stable rules, and how they follow.** Write ``NS`` for the plain Newton–Schulz output, whose
nonzero singular values lie in ``[0.68, 1.21]`` whatever its input's scale (``ttmem.newton_schulz``).
The instability is a units mismatch: an entry of ``NS(M)`` has the scale of the whole matrix (about
``1/√max(m, n)`` for every entry), an entry of ``√V`` the scale of that one gradient entry. Three repairs
keep the paper's structure (fast and slow momentum, both orthogonalised, an adaptive second moment):

1. ``variant="precondition"`` (the default): divide by ``√V̂`` (of raw gradients, as in the paper)
   *before* orthogonalising, ``U = s · (NS(M̂1 / (√V̂ + ε)) + α NS(M̂2 / (√V̂_k + ε)))``, where ``V̂_k``
   is the second moment at the end of the slow chunk. ``M̂ / √V̂`` is Adam's dimensionless direction, so
   the per-entry adaptivity is kept; a tiny ``√V̂_ij`` can now only enlarge one entry of the matrix that is
   orthogonalised, and Newton–Schulz bounds the singular values of the result whatever that entry is. So
   ``‖U‖_2 ≤ 1.21 · s · (1 + α)`` for every gradient sequence: no single step can be large (training can
   still diverge at too high a learning rate; the README measures where).
2. ``variant="orth-moment"`` (AdaMuon's choice): take the second moment of the orthogonalised direction,
   ``O = NS(M̂1) + α NS(M̂2)``, ``V ← β2 V + (1 − β2) O²``, ``U = O / (√V̂ + ε)``. Numerator and
   denominator now have the same units, and since ``V̂_t ≥ (1 − β2) O_t² / (1 − β2^t)``, every entry obeys
   ``|U_ij| ≤ √((1 − β2^t) / (1 − β2)) ≤ 1/√(1 − β2)``. ``U`` is then rescaled to entry RMS
   ``update_rms`` (Frobenius-based, as AdaMuon).
3. Shape-based RMS matching (Muon / Moonlight), ``s = update_rms · √max(m, n)``: an ``m × n`` matrix
   whose singular values are all 1 has entry RMS ``1/√max(m, n)``, so the update has entry RMS about
   ``update_rms``. Variants ``"precondition"`` and ``"rms-only"`` use it; ``"rms-only"``
   (``U = s · (NS(M̂1) + α NS(M̂2))``, Muon with a slow momentum) drops the second moment and is the
   ablation that shows what ``V`` adds.

``"precondition"`` is the default because it did best in the ablation in the README (section "Nested
Learning optimizers"), where every candidate was tuned on the same learning-rate grid.

**Which RMS.** The matrices and the AdamW-routed parameters share one ``lr``, so the matrix update must
have the size of an AdamW update, or one of the two groups trains at the wrong rate. Moonlight matches
``0.2``, the RMS of AdamW's update late in long runs. Early in training Adam's update is larger: at its
first step ``m̂ / √v̂ = sign(g)``, RMS exactly 1, and it stays near 1 while gradients keep their sign. In
the README's short runs, with ``update_rms = 0.2`` the best learning rate of M3 on ``transformer-tiny``
was 10x AdamW's, and at that rate M3 failed on ``mac-tiny``, whose AdamW-routed parameters (embeddings,
norms) then ran at 10x AdamW's own best rate (measured there). ``update_rms = 1.0`` (the default) matches Adam's
first-step RMS, so one ``lr`` suits both groups; for long runs 0.2 is the usual choice.

**Routing.** Orthogonalisation applies to parameters with at least 2 dims in a group whose
``orthogonalize`` is True (the default). Every other parameter (biases, norm gains, and 2-D parameters in
a group with ``orthogonalize=False``: embedding tables and the output head, whose rows are tokens, not a
linear map) gets AdamW in the stable variants: ``θ ← θ − lr · M̂1 / (√V̂ + ε)`` with ``β1, β2`` and the
same ``lr``, which is comparable because the matrix updates are RMS-matched. ``m3_param_groups(model)``
builds that split (``nn.Embedding`` tables and modules named ``lm_head`` / ``head`` / ``output`` go to
the AdamW group; only ≥2-D parameters are decayed). The paper variant keeps its own fallback for these
parameters, Adam with the slow momentum added: ``(M̂1 + α M̂2) / (√V̂ + ε)``.

Other choices: >2-D parameters (convolutions, and raw tensors such as per-head memory weights
``(heads, d_in, d_out)``) are flattened to ``(shape[0], prod(shape[1:]))`` for Newton–Schulz, the usual Muon
convention for filters; ``m3_param_groups`` treats every ≥2-D parameter that is not a token matrix as a
hidden matrix. ``weight_decay`` is decoupled (AdamW). Everything is per
parameter and in the parameter's dtype; ``state_dict`` holds plain tensors.

**Sharded parameters.** Orthogonalisation needs the whole matrix. A parameter that is a sharded
``DTensor`` (FSDP2's ``fully_shard``) in an orthogonalising group is refused when the group is added, with
a message; gathering it on every step would silently turn FSDP's memory saving into a full copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ttmem.newton_schulz import newton_schulz
from ttmem.optim.base import (
    CheckedOptimizer,
    apply_decoupled_weight_decay,
    betas_in_unit_interval,
    boolean,
    non_negative,
    one_of,
    positive,
    positive_int,
    reject_sparse,
)

VARIANTS = ("precondition", "orth-moment", "rms-only", "paper")
DEFAULT_VARIANT = "precondition"
# Module names whose weight is an output head (rows are tokens).
HEAD_NAMES = ("lm_head", "head", "output")


# -- parameter routing -----------------------------------------------------------------------------
def token_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Parameters whose rows are tokens: ``nn.Embedding`` tables and the weight of an output head
    (a module whose name ends in one of ``HEAD_NAMES``); tied weights are listed once."""
    found: dict[int, nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1] in HEAD_NAMES:
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.requires_grad and weight.ndim >= 2:
                found[id(weight)] = weight
    return list(found.values())


def m3_param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Param groups for ``M3`` over ``model``'s trainable parameters (see "Routing" in the module docstring).

    Returns up to three groups: hidden matrices (orthogonalised, decayed), token matrices (embeddings and
    output head: ``orthogonalize=False``, decayed) and 1-D parameters (not decayed; AdamW either way).
    """
    tokens = {id(p) for p in token_matrices(model)}
    unique = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    hidden = [p for p in unique if p.ndim >= 2 and id(p) not in tokens]
    token = [p for p in unique if id(p) in tokens]
    vectors = [p for p in unique if p.ndim < 2]
    groups = [
        {"params": hidden, "weight_decay": weight_decay},
        {"params": token, "weight_decay": weight_decay, "orthogonalize": False},
        {"params": vectors, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` split across processes (any ``Shard`` placement)."""
    placements = getattr(tensor, "placements", None)
    return placements is not None and any(p.is_shard() for p in placements)


# -- directions ------------------------------------------------------------------------------------
def as_matrix(tensor: Tensor) -> Tensor:
    return tensor.reshape(tensor.shape[0], -1)


def orthogonalize(momentum: Tensor, steps: int) -> Tensor:
    """Newton–Schulz direction of ``momentum`` (≥2-D, flattened to ``(shape[0], -1)``), same shape."""
    return newton_schulz(as_matrix(momentum), steps=steps).reshape(momentum.shape)


def orthogonalize_keep_norm(momentum: Tensor, steps: int) -> Tensor:
    """Newton–Schulz direction of ``momentum`` rescaled to ``momentum``'s Frobenius norm (paper variant).

    Args:
        momentum: parameter-shaped tensor with at least 2 dims; >2-D is flattened to
            ``(shape[0], -1)``.
        steps: Newton–Schulz iterations.

    Returns:
        Tensor shaped like ``momentum``; zero stays zero.
    """
    matrix = as_matrix(momentum)
    direction = newton_schulz(matrix, steps=steps)
    direction_norm = torch.linalg.matrix_norm(direction)
    scale = torch.linalg.matrix_norm(matrix) / torch.where(
        direction_norm > 0, direction_norm, torch.ones_like(direction_norm)
    )
    return (direction * scale).reshape(momentum.shape)


def shape_rms_scale(param: Tensor, update_rms: float) -> float:
    """Muon's factor ``update_rms · √max(m, n)``: an orthogonal ``m × n`` matrix then has RMS ``update_rms``."""
    rows = param.shape[0]
    return update_rms * math.sqrt(max(rows, param.numel() // max(rows, 1)))


def to_rms(update: Tensor, update_rms: float) -> Tensor:
    """``update`` rescaled in place to entry RMS ``update_rms`` (zero stays zero)."""
    rms = update.square().mean().sqrt()
    return update.mul_(update_rms / torch.where(rms > 0, rms, torch.ones_like(rms)))


class M3(CheckedOptimizer):
    """Multi-scale momentum Muon. See the module docstring for the exact rules and the routing.

    Args:
        params: parameters or parameter groups (``m3_param_groups(model)`` routes a model's parameters).
        lr: step size (>= 0).
        betas: ``(β1, β2, β3)`` keep rates of the fast momentum, second moment and slow momentum.
        alpha: weight of the slow direction (>= 0).
        frequency: ``f``, steps per slow-momentum update (>= 1).
        eps: added to ``√V̂`` (> 0).
        ns_steps: Newton–Schulz iterations (>= 1).
        weight_decay: decoupled weight decay (>= 0).
        orthogonalize: whether ≥2-D parameters of the group are orthogonalised (else AdamW).
        variant: ``"precondition"`` (default, stable), ``"orth-moment"``, ``"rms-only"`` or ``"paper"``
            (the literal rule, unstable on uneven gradients).
        update_rms: RMS of a matrix update per unit ``lr`` in the stable variants (> 0); 1.0 matches
            Adam's first steps, Moonlight's 0.2 matches AdamW late in long runs (module docstring).
    """

    VARIANTS = VARIANTS
    CHECKS = {
        "lr": non_negative,
        "betas": betas_in_unit_interval(3),
        "alpha": non_negative,
        "frequency": positive_int,
        "eps": positive,
        "ns_steps": positive_int,
        "weight_decay": non_negative,
        "orthogonalize": boolean,
        "variant": one_of(*VARIANTS),
        "update_rms": positive,
    }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 3e-3,
        betas: tuple[float, float, float] = (0.9, 0.95, 0.9),
        alpha: float = 0.5,
        frequency: int = 10,
        eps: float = 1e-8,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        orthogonalize: bool = True,
        variant: str = DEFAULT_VARIANT,
        update_rms: float = 1.0,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, alpha=alpha,
            frequency=frequency, eps=eps, ns_steps=ns_steps, weight_decay=weight_decay,
            orthogonalize=orthogonalize, variant=variant, update_rms=update_rms,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for index, param in enumerate(group["params"]):
            if self._orthogonalized(param, group) and is_sharded(param):
                raise ValueError(
                    f"M3 orthogonalises whole matrices, but parameter {index} of param group "
                    f"{len(self.param_groups) - 1} (shape {tuple(param.shape)}) is sharded across processes "
                    f"(placements {tuple(param.placements)}, e.g. FSDP); train with distributed=ddp, or "
                    "put sharded parameters in a param group with orthogonalize=False"
                )

    @staticmethod
    def _orthogonalized(param: Tensor, group: dict[str, Any]) -> bool:
        return param.dim() >= 2 and group["orthogonalize"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = reject_sparse(param, "M3")
                state = self.state[param]
                if not state:
                    self._init_state(state, param, group)
                state["step"] += 1
                if group["variant"] == "paper":
                    update = self._paper_update(state, grad, group, self._orthogonalized(param, group))
                elif self._orthogonalized(param, group):
                    update = self._stable_matrix_update(state, param, grad, group)
                else:
                    update = self._adamw_update(state, grad, group)
                apply_decoupled_weight_decay(param, group["lr"], group["weight_decay"])
                param.add_(update, alpha=-group["lr"])
        return loss

    # -- state and rules ---------------------------------------------------------------------------
    def _init_state(self, state: dict[str, Any], param: Tensor, group: dict[str, Any]) -> None:
        state["step"] = 0
        names = ["fast_momentum", "second_moment"]
        if group["variant"] == "paper" or self._orthogonalized(param, group):
            state["slow_updates"] = 0
            names += ["slow_momentum", "slow_direction", "chunk_grad_sum"]
        for name in names:
            state[name] = torch.zeros_like(param)

    @staticmethod
    def _second_moment_hat(state: dict[str, Any], beta2: float) -> Tensor:
        return state["second_moment"] / (1 - beta2 ** state["step"])

    def _slow_update(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any],
                     direction: Callable[[Tensor], Tensor]) -> None:
        """Accumulate the chunk; at its end, update ``M2`` and store ``direction(M̂2)`` as ``O2``."""
        state["chunk_grad_sum"].add_(grad)
        if state["step"] % group["frequency"]:
            return
        beta3 = group["betas"][2]
        state["slow_momentum"].lerp_(state["chunk_grad_sum"] / group["frequency"], 1 - beta3)
        state["slow_updates"] += 1
        slow = state["slow_momentum"] / (1 - beta3 ** state["slow_updates"])
        state["slow_direction"].copy_(direction(slow))
        state["chunk_grad_sum"].zero_()

    def _paper_update(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any], matrix: bool) -> Tensor:
        beta1, beta2, _ = group["betas"]

        def direction(momentum: Tensor) -> Tensor:
            return orthogonalize_keep_norm(momentum, group["ns_steps"]) if matrix else momentum

        state["fast_momentum"].lerp_(grad, 1 - beta1)
        state["second_moment"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        fast = direction(state["fast_momentum"] / (1 - beta1 ** state["step"]))
        update = fast.add_(state["slow_direction"], alpha=group["alpha"])
        update.div_(self._second_moment_hat(state, beta2).sqrt_().add_(group["eps"]))
        # O2 of this chunk is used from the next step on: update it after this step's direction.
        self._slow_update(state, grad, group, direction)
        return update

    def _adamw_update(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any]) -> Tensor:
        beta1, beta2, _ = group["betas"]
        state["fast_momentum"].lerp_(grad, 1 - beta1)
        state["second_moment"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        fast = state["fast_momentum"] / (1 - beta1 ** state["step"])
        return fast.div_(self._second_moment_hat(state, beta2).sqrt_().add_(group["eps"]))

    def _stable_matrix_update(self, state: dict[str, Any], param: Tensor, grad: Tensor,
                              group: dict[str, Any]) -> Tensor:
        beta1, beta2, _ = group["betas"]
        variant, steps, eps = group["variant"], group["ns_steps"], group["eps"]
        state["fast_momentum"].lerp_(grad, 1 - beta1)
        fast = state["fast_momentum"] / (1 - beta1 ** state["step"])
        if variant == "precondition":
            state["second_moment"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = self._second_moment_hat(state, beta2).sqrt_().add_(eps)
            update = orthogonalize(fast / denom, steps).add_(state["slow_direction"], alpha=group["alpha"])
            update.mul_(shape_rms_scale(param, group["update_rms"]))
            self._slow_update(state, grad, group, lambda slow: orthogonalize(slow / denom, steps))
            return update
        update = orthogonalize(fast, steps).add_(state["slow_direction"], alpha=group["alpha"])
        self._slow_update(state, grad, group, lambda slow: orthogonalize(slow, steps))
        if variant == "rms-only":
            return update.mul_(shape_rms_scale(param, group["update_rms"]))
        # orth-moment: second moment of the orthogonalised direction itself.
        state["second_moment"].mul_(beta2).addcmul_(update, update, value=1 - beta2)
        update.div_(self._second_moment_hat(state, beta2).sqrt_().add_(eps))
        return to_rms(update, group["update_rms"])
