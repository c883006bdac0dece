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
nonzero singular values lie in ``[0.68, 1.21]`` whatever its input's scale (``ttmem.newton_schulz``),
and ``P = M̂ / (√V̂ + ε)`` for Adam's update built from a momentum ``M̂``. The paper's instability is a
units mismatch: an entry of ``NS(M)`` has the scale of the whole matrix (about ``1/√max(m, n)`` for every
entry), an entry of ``√V`` the scale of that one gradient entry. The repairs keep the paper's structure
(fast and slow momentum, both orthogonalised, an adaptive second moment):

1. ``variant="precondition"``: divide by ``√V̂`` (of raw gradients, as in the paper)
   *before* orthogonalising, and give the result the paper's own ``orth`` (Newton–Schulz direction
   rescaled to its input's Frobenius norm):

       U = orth(M̂1 / (√V̂ + ε)) + α orth(M̂2 / (√V̂2 + ε)),   ‖orth(P)‖_F = ‖P‖_F,

   where ``V2`` is a second moment on the slow momentum's time scale (below). ``P`` is Adam's dimensionless update,
   so the per-entry adaptivity is kept (a tiny ``√V̂_ij`` only enlarges one entry of the matrix that is
   orthogonalised) and the update has exactly the Frobenius norm, hence the RMS, of Adam's update with
   the same momentum: Newton–Schulz chooses the direction, Adam the size. That size is bounded: by
   Cauchy–Schwarz on the two exponential averages, every entry of Adam's update obeys
   ``|m̂_t| / √v̂_t ≤ (1 − β1) / √((1 − β2)(1 − β1²/β2))`` (1.165 at ``β1, β2 = 0.9, 0.95``, the
   supremum over ``t``; 1 at ``t = 1``), so the fast term has ``RMS ≤ 1.165``.

   *Why Adam's size and not a fixed one.* The first stable form (now ``"precondition-shape"``) scaled
   the same direction by Muon's shape factor, ``U = s · (NS(P1) + α NS(P2))`` with
   ``s = update_rms · √max(m, n)``, so every matrix moved by RMS about ``lr · update_rms`` at every step,
   whatever the gradient said. On ``mac-tiny`` at lr 1e-2 (3x its best) that diverged, and per-parameter
   measurements (README, "Nested Learning optimizers") show how. A fixed-size step along a persistent
   direction grows every hidden matrix steadily: median weight RMS 2.0x its initial value by step 15 and
   5.0x by step 60, against 1.2x and 1.6x with AdamW at the same lr; the memory layers' gate projections,
   initialised at zero, reached RMS 0.26 (AdamW: 0.05). The network sharpens until the gradient norm,
   1–6 until step 16, reaches 1.2e2 at step 17, 2.5e3 at step 19 and stays between 2e4 and 8e7 from
   step 20 on (64% of it in the embedding table at step 20, the next shares in the first MAC block).
   The trainer clips it to norm 1, so every other matrix's gradient falls by a factor 1e4 or more.
   Adam's ``P`` then shrinks (``M̂`` forgets at ``β1``, ``√V̂`` more slowly), which is how AdamW
   recovers; but ``NS(P)`` has singular values near 1 for any nonzero ``P``, so the fixed-size rule
   kept moving every matrix at full size (median update RMS 1.2 lr at step 30) along its stale momentum, and
   the training loss climbed from 2.65 (step 6) to 5.5–5.9.
   Giving the AdamW-routed embeddings and norms a third of the lr, or sending the gate projections or
   the persistent tokens to AdamW, did not prevent it; taking Adam's size did. A fixed RMS throws away
   the one number ``P`` carries besides its direction, its size, which says how consistently the
   gradient has pointed that way; ``orth`` keeps it, as in the paper's own rule.

   *The slow term gets its own second moment.* ``M2`` averages over ``f / (1 − β3)`` steps (100 at the
   defaults), ``V`` over ``1 / (1 − β2)`` (20): when gradients shrink, ``V`` forgets the old scale long
   before ``M2`` does, so ``M̂2 / √V̂`` grows without bound. The rule divides ``M̂2`` by ``V2``, the
   same exponential average as ``M2`` (same ``β3``, bias correction and chunks) of each chunk's mean
   squared gradient. With equal rates, Cauchy–Schwarz and Jensen give ``|M̂2_ij| ≤ √V̂2_ij``, so
   ``U = orth(M̂1 / (√V̂ + ε)) + α orth(M̂2 / (√V̂2 + ε))`` obeys ``RMS(U) ≤ 1.165 + α`` for every
   gradient sequence (``β1² < β2``). It costs two more parameter-sized buffers per matrix.

   ``variant="precondition-project"`` (the default) keeps that direction and that slow second moment but
   sizes each term as the multiple of ``D = NS(P)`` closest to ``P`` in Frobenius norm, Adam's update projected on its
   orthogonalised direction: ``U = D · ⟨D, P⟩ / ‖D‖²_F``. By Cauchy–Schwarz ``‖U‖_F ≤ ‖P‖_F``, with equality
   when ``P`` is already a multiple of an orthogonal matrix; for ``D`` the exact polar factor of a ``P`` with
   singular values ``s_i``, ``‖U‖_F = Σ s_i / √rank`` (nuclear norm over ``√rank``), so the step shrinks when
   Adam's update is concentrated in a few directions, where ``"precondition"`` spreads ``‖P‖_F`` over all
   of them. The bound above holds a fortiori.
2. ``variant="orth-moment"`` (AdaMuon's choice): take the second moment of the orthogonalised direction,
   ``O = NS(M̂1) + α NS(M̂2)``, ``V ← β2 V + (1 − β2) O²``, ``U = O / (√V̂ + ε)``. Numerator and
   denominator now have the same units, and since ``V̂_t ≥ (1 − β2) O_t² / (1 − β2^t)``, every entry obeys
   ``|U_ij| ≤ √((1 − β2^t) / (1 − β2)) ≤ 1/√(1 − β2)``. ``U`` is then rescaled to entry RMS
   ``update_rms`` (Frobenius-based, as AdaMuon).
3. Shape-based RMS matching (Muon / Moonlight), ``s = update_rms · √max(m, n)``: an ``m × n`` matrix
   whose singular values are all 1 has entry RMS ``1/√max(m, n)``, so the update has entry RMS about
   ``update_rms``. Variants ``"precondition-shape"`` (above) and ``"rms-only"`` use it;
   ``"rms-only"`` (``U = s · (NS(M̂1) + α NS(M̂2))``, Muon with a slow momentum) drops the second moment
   and is the ablation that shows what ``V`` adds.

``"precondition-project"`` is the default because it is the rule that met every acceptance point of the
benchmark (README, "Nested Learning optimizers"). ``"precondition"``, the default before it, tied the best
fixed-size rule on ``transformer-tiny`` and trained at every lr from 1e-3 to 1e-2 on ``mac-tiny``, but at 3e-2
(3x its best) it breaks there (gradient norm 1e4–1e7 from step 18 on), also with fused weights split; one-off
checks located the break in the orthogonalised updates of the neural-memory layers' parameters, and Nesterov
momentum, a longer second moment, fewer Newton–Schulz steps or dropping the slow term did not prevent it. The
projected size did: at 3e-2 on ``mac-tiny`` it ends at 4.76 bpb (seed 0, gradient norm at most 466;
3.89 and 5.38 at seeds 1 and 2, the edge of its range) where ``"precondition"`` ends at 9.79 (2.3e7), and
at the best lr it costs a difference inside the seed noise (3.61 against 3.57 bpb on ``mac-tiny``, 3.57
against 3.55 on ``transformer-tiny``, three seeds each), still 0.13 and 0.63 below AdamW. Its best lr is
1e-2 on ``mac-tiny`` and 3e-2 on ``transformer-tiny``; the default ``lr``, 3e-3, is a third of the smaller.

``update_rms`` is the size of the fixed-size variants (``"precondition-shape"``, ``"orth-moment"``,
``"rms-only"``); ``"precondition"`` and ``"precondition-project"`` take their size from Adam and do not read
it. ``update_rms = 1.0`` (the default) is the RMS of Adam's update at its first step (``sign(g)``), so one
``lr`` suits both the matrices and the AdamW-routed parameters; Moonlight's 0.2 matches AdamW late in long runs.

**Routing.** Orthogonalisation applies to parameters with at least 2 dims in a group whose
``orthogonalize`` is True (the default). Every other parameter (biases, norm gains, and 2-D parameters in
a group with ``orthogonalize=False``: embedding tables and the output head, whose rows are tokens, not a
linear map) gets AdamW in the stable variants: ``θ ← θ − lr · M̂1 / (√V̂ + ε)`` with ``β1, β2`` and the
same ``lr``, which is comparable because the default matrix update has Adam's size (the fixed-size
variants match Adam's first-step RMS with ``update_rms = 1``). ``m3_param_groups(model)``
builds that split (``nn.Embedding`` tables and modules named ``lm_head`` / ``head`` / ``output`` go to
the AdamW group, and so do norm gains stored per head as ≥2-D parameters, named ``*norm*``, such as the
memory layer's ``out_norm_weight``; only ≥2-D parameters are decayed, norm gains never). The paper variant
keeps its own fallback for these parameters, Adam with the slow momentum added: ``(M̂1 + α M̂2) / (√V̂ + ε)``.

**Fused weights.** Every rule above acts on one matrix, a linear map. A layer that computes several
projections with one weight (queries, keys and values from one ``nn.Linear(d, 3 · inner)`` whose output is cut
in thirds; a SwiGLU's gate and value; the memory layer's depthwise q/k/v convolution) holds several matrices
stacked along its rows, and declares their row counts once where it builds the weight
(``ttmem.fused.declare_row_blocks``, e.g. ``(inner, inner, inner)``). ``m3_param_groups`` puts the weights of
each distinct layout in a group whose ``row_blocks`` is that layout, and M3 then applies each rule to every
block on its own: the Newton–Schulz direction, ``orth``'s rescaling to the block's Frobenius norm, Muon's
``√max(m, n)`` with the block's own ``m`` and ``"orth-moment"``'s RMS. The paper variant splits its ``orth``
the same way. Orthogonalising the stack as one matrix returns the polar factor of the stack:
its rows are orthonormal jointly, so the three blocks share one set of singular directions and one size,
which is not the update of any of the three maps (Muon and Moonlight orthogonalise q, k and v separately).
Measured (README): the split improves ``transformer-tiny`` at 3x the best lr and does not fix ``mac-tiny``'s
break there.

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

from ttmem.fused import check_row_blocks, row_blocks
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


def row_block_sizes(name: str, value: Any) -> None:
    """None, or the row counts of a fused weight's logical matrices (``ttmem.fused.check_row_blocks``)."""
    if value is not None:
        check_row_blocks(name, value)


VARIANTS = ("precondition", "precondition-project", "precondition-shape", "orth-moment", "rms-only", "paper")
# Variants that divide the slow momentum by its own second moment before orthogonalising it.
SLOW_SECOND_MOMENT = ("precondition", "precondition-project")
DEFAULT_VARIANT = "precondition-project"
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


def norm_gains(model: nn.Module) -> list[nn.Parameter]:
    """Norm gains stored as ≥2-D parameters (one gain vector per head, e.g. ``NeuralMemory.out_norm_weight``):
    parameters whose own name contains ``norm``. They scale channels, they are not linear maps."""
    return [p for name, p in model.named_parameters() if p.ndim >= 2 and "norm" in name.rsplit(".", 1)[-1]]


def fused_layouts(model: nn.Module) -> dict[int, tuple[int, ...]]:
    """``id(param) -> row blocks`` for every ≥2-D parameter of a module that declares a fused layout
    (``ttmem.fused.declare_row_blocks``) and whose first dimension is the declared one."""
    layouts: dict[int, tuple[int, ...]] = {}
    for module in model.modules():
        blocks = row_blocks(module)
        if blocks is None:
            continue
        for param in module.parameters(recurse=False):
            if param.ndim >= 2 and param.shape[0] == sum(blocks):
                layouts[id(param)] = blocks
    return layouts


def m3_param_groups(model: nn.Module, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Param groups for ``M3`` over ``model``'s trainable parameters (see "Routing" in the module docstring).

    Returns hidden matrices (orthogonalised, decayed: one group of plain matrices and one per fused layout,
    whose ``row_blocks`` is the layout), token matrices (embeddings and output head: ``orthogonalize=False``,
    decayed) and 1-D parameters (not decayed; AdamW either way); empty groups are left out.
    """
    tokens = {id(p) for p in token_matrices(model)}
    gains = {id(p) for p in norm_gains(model)}
    layouts = fused_layouts(model)
    unique = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
    hidden: dict[tuple[int, ...] | None, list[nn.Parameter]] = {None: []}
    for param in unique:
        if param.ndim >= 2 and id(param) not in tokens and id(param) not in gains:
            hidden.setdefault(layouts.get(id(param)), []).append(param)
    token = [p for p in unique if id(p) in tokens]
    vectors = [p for p in unique if p.ndim < 2 or id(p) in gains]
    groups = [
        {"params": params, "weight_decay": weight_decay, "row_blocks": blocks} for blocks, params in hidden.items()
    ]
    groups += [
        {"params": token, "weight_decay": weight_decay, "orthogonalize": False},
        {"params": vectors, "weight_decay": 0.0, "orthogonalize": False},
    ]
    return [g for g in groups if g["params"]]


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` split across processes (any ``Shard`` placement)."""
    placements = getattr(tensor, "placements", None)
    return placements is not None and any(p.is_shard() for p in placements)


# -- directions ------------------------------------------------------------------------------------
# Each rule below acts on one matrix; ``per_matrix`` applies it to every logical matrix of a parameter.
def per_matrix(rule: Callable[[Tensor], Tensor], tensor: Tensor, blocks: tuple[int, ...] | None) -> Tensor:
    """``rule`` applied to each logical matrix of ``tensor`` (≥2-D, flattened to ``(shape[0], -1)``, the Muon
    convention for filters): the row blocks ``blocks`` of a fused weight, or the whole matrix when None.
    Returns a new tensor shaped like ``tensor``."""
    matrix = tensor.reshape(tensor.shape[0], -1)
    parts = matrix.split(list(blocks)) if blocks is not None else (matrix,)
    return torch.cat([rule(part) for part in parts]).reshape(tensor.shape)


def keep_norm(direction: Tensor, matrix: Tensor) -> Tensor:
    """``direction`` rescaled to ``matrix``'s Frobenius norm (zero stays zero)."""
    direction_norm = torch.linalg.matrix_norm(direction)
    return direction * (torch.linalg.matrix_norm(matrix) / torch.where(
        direction_norm > 0, direction_norm, torch.ones_like(direction_norm)))


def shape_rms_scale(rows: int, columns: int, update_rms: float) -> float:
    """Muon's factor ``update_rms · √max(m, n)``: an orthogonal ``m × n`` matrix then has RMS ``update_rms``."""
    return update_rms * math.sqrt(max(rows, columns))


def to_rms(update: Tensor, update_rms: float) -> Tensor:
    """``update`` rescaled to entry RMS ``update_rms`` (zero stays zero)."""
    rms = update.square().mean().sqrt()
    return update * (update_rms / torch.where(rms > 0, rms, torch.ones_like(rms)))


def orthogonalize(momentum: Tensor, steps: int, blocks: tuple[int, ...] | None = None) -> Tensor:
    """Newton–Schulz direction of each logical matrix of ``momentum`` (see ``per_matrix``), same shape."""
    return per_matrix(lambda m: newton_schulz(m, steps=steps), momentum, blocks)


def orthogonalize_keep_norm(momentum: Tensor, steps: int, blocks: tuple[int, ...] | None = None) -> Tensor:
    """Newton–Schulz direction of each logical matrix of ``momentum`` rescaled to that matrix's Frobenius norm
    (the paper's ``orth``; the whole update then keeps ``momentum``'s Frobenius norm). Zero stays zero.

    Args:
        momentum: parameter-shaped tensor with at least 2 dims (see ``per_matrix``).
        steps: Newton–Schulz iterations.
        blocks: row counts of the logical matrices of a fused weight, or None for one matrix.
    """
    return per_matrix(lambda m: keep_norm(newton_schulz(m, steps=steps), m), momentum, blocks)


def project(direction: Tensor, matrix: Tensor) -> Tensor:
    """The component of ``matrix`` along ``direction``: ``direction · ⟨direction, matrix⟩ / ‖direction‖²_F``
    (zero stays zero). Its Frobenius norm is at most ``matrix``'s (Cauchy–Schwarz)."""
    norm2 = direction.square().sum()
    return direction * ((direction * matrix).sum() / torch.where(norm2 > 0, norm2, torch.ones_like(norm2)))


def orthogonalize_project(momentum: Tensor, steps: int, blocks: tuple[int, ...] | None = None) -> Tensor:
    """``momentum`` projected on the Newton–Schulz direction of each of its logical matrices (``project``)."""
    return per_matrix(lambda m: project(newton_schulz(m, steps=steps), m), momentum, blocks)


def orthogonalize_shape_scaled(momentum: Tensor, steps: int, update_rms: float,
                               blocks: tuple[int, ...] | None = None) -> Tensor:
    """Newton–Schulz direction of each logical ``m × n`` matrix of ``momentum`` times
    ``shape_rms_scale(m, n, update_rms)`` (Muon's RMS matching, per logical matrix)."""
    return per_matrix(
        lambda m: newton_schulz(m, steps=steps).mul_(shape_rms_scale(*m.shape, update_rms)), momentum, blocks)


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
        variant: ``"precondition-project"`` (default, stable: orthogonalised direction, Adam's update
            projected on it), ``"precondition"`` (the same direction at Adam's Frobenius norm),
            ``"precondition-shape"``, ``"orth-moment"``, ``"rms-only"`` (fixed-size ablations) or
            ``"paper"`` (the literal rule, unstable on uneven gradients).
        update_rms: RMS of a matrix update per unit ``lr`` in the fixed-size variants (> 0; the Adam-sized
            variants do not read it); 1.0 matches Adam's first steps, Moonlight's 0.2 matches AdamW late
            in long runs (module docstring).
        row_blocks: for a group of fused weights, the row counts of the logical matrices each one stacks
            (e.g. ``(d, d, d)`` for a ``(3d, n)`` query/key/value projection); each is orthogonalised on its
            own. None (the default): every parameter is one matrix. ``m3_param_groups`` sets it from the
            layers' declarations (``ttmem.fused``).
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
        "row_blocks": row_block_sizes,
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
        row_blocks: tuple[int, ...] | None = None,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, alpha=alpha,
            frequency=frequency, eps=eps, ns_steps=ns_steps, weight_decay=weight_decay,
            orthogonalize=orthogonalize, variant=variant, update_rms=update_rms, row_blocks=row_blocks,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if isinstance(group["row_blocks"], list):
            group["row_blocks"] = tuple(group["row_blocks"])
        for index, param in enumerate(group["params"]):
            blocks = group["row_blocks"]
            if self._orthogonalized(param, group) and blocks is not None and sum(blocks) != param.shape[0]:
                raise ValueError(
                    f"row_blocks {blocks} of param group {len(self.param_groups) - 1} add up to {sum(blocks)} "
                    f"rows, but its parameter {index} has shape {tuple(param.shape)}"
                )
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
                    update = self._stable_matrix_update(state, grad, group)
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
            if group["variant"] in SLOW_SECOND_MOMENT and self._orthogonalized(param, group):
                names += ["slow_second_moment", "chunk_square_sum"]
        for name in names:
            state[name] = torch.zeros_like(param)

    @staticmethod
    def _second_moment_hat(state: dict[str, Any], beta2: float) -> Tensor:
        return state["second_moment"] / (1 - beta2 ** state["step"])

    def _slow_update(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any],
                     direction: Callable[[Tensor], Tensor]) -> None:
        """Accumulate the chunk; at its end, update ``M2`` and store ``direction(M̂2)`` as ``O2``.

        With a slow second moment in the state (the Adam-sized variants), ``M̂2 / (√V̂2 + ε)`` goes to
        ``direction`` instead, ``V2`` the same average as ``M2`` of the chunks' mean squared gradients."""
        state["chunk_grad_sum"].add_(grad)
        if "chunk_square_sum" in state:
            state["chunk_square_sum"].addcmul_(grad, grad)
        if state["step"] % group["frequency"]:
            return
        beta3, frequency = group["betas"][2], group["frequency"]
        state["slow_momentum"].lerp_(state["chunk_grad_sum"] / frequency, 1 - beta3)
        state["slow_updates"] += 1
        correction = 1 - beta3 ** state["slow_updates"]
        slow = state["slow_momentum"] / correction
        if "slow_second_moment" in state:
            state["slow_second_moment"].lerp_(state["chunk_square_sum"] / frequency, 1 - beta3)
            state["chunk_square_sum"].zero_()
            slow.div_((state["slow_second_moment"] / correction).sqrt_().add_(group["eps"]))
        state["slow_direction"].copy_(direction(slow))
        state["chunk_grad_sum"].zero_()

    def _paper_update(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any], matrix: bool) -> Tensor:
        beta1, beta2, _ = group["betas"]

        def direction(momentum: Tensor) -> Tensor:
            return orthogonalize_keep_norm(momentum, group["ns_steps"], group["row_blocks"]) if matrix else momentum

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

    def _stable_matrix_update(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any]) -> Tensor:
        beta1, beta2, _ = group["betas"]
        variant, steps, eps, rms = group["variant"], group["ns_steps"], group["eps"], group["update_rms"]
        blocks = group["row_blocks"]  # every direction below is taken per logical matrix
        state["fast_momentum"].lerp_(grad, 1 - beta1)
        fast = state["fast_momentum"] / (1 - beta1 ** state["step"])
        if variant in ("precondition", "precondition-project", "precondition-shape"):
            state["second_moment"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = self._second_moment_hat(state, beta2).sqrt_().add_(eps)
            if variant in SLOW_SECOND_MOMENT:
                # Newton–Schulz's direction with the Frobenius norm of Adam's update (or Adam's update projected
                # on that direction); _slow_update divides the slow momentum by its own second moment.
                rule = orthogonalize_keep_norm if variant == "precondition" else orthogonalize_project
                update = rule(fast / denom, steps, blocks)

                def slow_direction(slow: Tensor) -> Tensor:
                    return rule(slow, steps, blocks)
            else:
                update = orthogonalize_shape_scaled(fast / denom, steps, rms, blocks)

                def slow_direction(slow: Tensor) -> Tensor:
                    return orthogonalize_shape_scaled(slow / denom, steps, rms, blocks)
            update.add_(state["slow_direction"], alpha=group["alpha"])  # O2 of the previous chunk
            self._slow_update(state, grad, group, slow_direction)
            return update
        if variant == "rms-only":
            update = orthogonalize_shape_scaled(fast, steps, rms, blocks)
            update.add_(state["slow_direction"], alpha=group["alpha"])
            self._slow_update(state, grad, group, lambda slow: orthogonalize_shape_scaled(slow, steps, rms, blocks))
            return update
        # orth-moment: second moment of the orthogonalised direction itself, then RMS per logical matrix.
        update = orthogonalize(fast, steps, blocks).add_(state["slow_direction"], alpha=group["alpha"])
        self._slow_update(state, grad, group, lambda slow: orthogonalize(slow, steps, blocks))
        state["second_moment"].mul_(beta2).addcmul_(update, update, value=1 - beta2)
        update.div_(self._second_moment_hat(state, beta2).sqrt_().add_(eps))
        return per_matrix(lambda m: to_rms(m, rms), update, blocks)
