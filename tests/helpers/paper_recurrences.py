"""Each preset's recurrence written token by token from its paper's equation (docs/rules.md gives the sources).

These loops share no code with the engine: the memory networks, losses, retention maps and the Newton–Schulz
iteration are written out here again from their definitions, and the linear memories use the papers' matrix
forms (S (I − β k kᵀ) + β v kᵀ and so on) rather than gradients. Where ttmem deliberately departs from a paper
(the chunk-boundary views of Moneta, Memora and ATLAS, gradients at the chunk-start weights), the loop follows
the documented departure and says so.

Conventions (docs/rules.md): ttmem's forget gate α is the fraction forgotten, so the papers' decay / keep factor
is 1 − α; ℓ2 losses are ½‖·‖² (a paper's ‖·‖² doubles the gradient, i.e. θ here is twice the paper's step);
reads come after the token's write, y_t = M_t(q_t). Inputs use ``memorize``'s layout [batch, time, heads, dim]
and gates [batch, time, heads]; states are [batch, heads, out, in].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-5      # the memory MLP's parameter-free LayerNorm
SMOOTH_EPS = 1e-6  # Moneta's smooth |x| = √(x² + ε) in both ℓp and the ℓq norm
P_NORM, Q_NORM = 3.0, 4.0
ATLAS_WINDOW, ATLAS_NS_STEPS = 4, 5


# -- memory networks -------------------------------------------------------------------------------------------

def linear_read(w: Tensor, x: Tensor) -> Tensor:
    """W x for W [B, H, out, in], x [B, H, in]."""
    return torch.einsum("bhoi,bhi->bho", w, x)


def outer(a: Tensor, b: Tensor) -> Tensor:
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def mlp_memory(weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """The Titans-family memory: M(x) = x + LN(W₂ GELU(W₁ x)), LayerNorm without parameters; with one weight
    matrix (the paper's L_M = 1) the plain matrix memory M(x) = W x."""
    if len(weights) == 1:
        return linear_read(weights[0], x)
    h = F.gelu(linear_read(weights[0], x))
    y = linear_read(weights[1], h)
    mean = y.mean(-1, keepdim=True)
    var = ((y - mean) ** 2).mean(-1, keepdim=True)
    return x + (y - mean) / torch.sqrt(var + LN_EPS)


# -- inner losses ----------------------------------------------------------------------------------------------

def half_squared_error(pred: Tensor, v: Tensor, _threshold: Tensor | None) -> Tensor:
    return 0.5 * ((pred - v) ** 2).sum(-1)


def smooth_lp_error(pred: Tensor, v: Tensor, _threshold: Tensor | None) -> Tensor:
    """Moneta's ‖M(k) − v‖_p^p with |x| smoothed to √(x² + ε)."""
    return (((pred - v) ** 2 + SMOOTH_EPS) ** (P_NORM / 2)).sum(-1)


def huber_error(pred: Tensor, v: Tensor, threshold: Tensor) -> Tensor:
    """Yaad: ½‖e‖² while ‖e‖ ≤ δ_t, else δ_t ‖e‖₁ (the ℓ1 branch scaled by δ_t)."""
    e = pred - v
    return torch.where(e.norm(dim=-1) <= threshold, 0.5 * (e * e).sum(-1), threshold * e.abs().sum(-1))


def loss_gradient(loss, weights: tuple[Tensor, ...], terms: list[tuple[Tensor, Tensor, Tensor | None]]):
    """∇_W Σ_terms loss(M_W(k), v): autograd of the paper's loss at W, differentiable for the outer loop."""
    with torch.enable_grad():
        at = tuple(w if w.requires_grad else w.detach().requires_grad_() for w in weights)
        total = sum(loss(mlp_memory(at, k), v, thr).sum() for k, v, thr in terms)
        return torch.autograd.grad(total, at, create_graph=True)


# -- retention maps and Newton–Schulz --------------------------------------------------------------------------

def lq_normalise(a: Tensor) -> Tensor:
    """Moneta: W = A / ‖A‖_q^{q−2}, entrywise q-norm of each layer matrix with the smooth |·|."""
    norm_q = (((a * a + SMOOTH_EPS) ** (Q_NORM / 2)).sum((-2, -1), keepdim=True)) ** (1 / Q_NORM)
    return a / norm_q ** (Q_NORM - 2)


def cubic_newton_schulz(x: Tensor, steps: int) -> Tensor:
    """X₀ = X / ‖X‖_F, X ← 1.5 X − 0.5 X Xᵀ X; a zero matrix stays zero."""
    norm = torch.linalg.matrix_norm(x, keepdim=True)
    y = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    for _ in range(steps):
        y = 1.5 * y - 0.5 * y @ y.mT @ y
    return y


# -- the loops -------------------------------------------------------------------------------------------------

def _token(inputs: dict, name: str, t: int) -> Tensor | None:
    x = inputs.get(name)
    return None if x is None else x[:, t]


def _gate(inputs: dict, name: str, t: int, default: float = 0.0) -> Tensor:
    """A gate of token t as [B, H, 1, 1]; a gate the caller left out is ``default``."""
    g = inputs.get(name)
    if g is None:
        return torch.full((1, 1, 1, 1), default, dtype=inputs["q"].dtype)
    return g[:, t, :, None, None]


def _batched(weights: tuple[Tensor, ...], batch: int) -> tuple[Tensor, ...]:
    return tuple(w.unsqueeze(0).expand(batch, *w.shape) for w in weights)


def delta_family(kind: str, inputs: dict, init: tuple[Tensor, ...], chunk: int) -> tuple[Tensor, dict]:
    """Linear memories, one exact update per token (the chunk size does not enter):

    delta             S_t = S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ                 (DeltaNet)
    gated_delta       S_t = S_{t−1} (a_t (I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ, a_t = 1 − α_t  (Gated DeltaNet)
    theta             W_t = W_{t−1} − θ_t (W_{t−1} k_t − v_t) k_tᵀ                     (θMN)
    linear_attention  S_t = S_{t−1} + θ_t v_t k_tᵀ                                     (linear attention)
    """
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    s = _batched(init, q.shape[0])[0]
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    outputs = []
    for t in range(q.shape[1]):
        kt, vt, beta = k[:, t], v[:, t], _gate(inputs, "lr", t)
        if kind == "delta":
            s = s @ (eye - beta * outer(kt, kt)) + beta * outer(vt, kt)
        elif kind == "gated_delta":
            decay = 1.0 - _gate(inputs, "forget", t)
            s = s @ (decay * (eye - beta * outer(kt, kt))) + beta * outer(vt, kt)
        elif kind == "theta":
            s = s - beta * outer(linear_read(s, kt) - vt, kt)
        elif kind == "linear_attention":
            s = s + beta * outer(vt, kt)
        else:
            raise ValueError(f"not a linear delta-family rule: {kind!r}")
        outputs.append(linear_read(s, q[:, t]))
    return torch.stack(outputs, 1), {"weights": (s,)}


def theta_lowrank(inputs: dict, init: tuple[Tensor, ...], chunk: int) -> tuple[Tensor, dict]:
    """θMN(r): M(k) = U V k; one gradient step of ½‖U V k − v‖² on both factors, taken at (U_{t−1}, V_{t−1}):
    U_t = U_{t−1} − θ_t e_t (V_{t−1} k_t)ᵀ,  V_t = V_{t−1} − θ_t U_{t−1}ᵀ e_t k_tᵀ,  e_t = U_{t−1} V_{t−1} k_t − v_t."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    vmat, umat = _batched(init, q.shape[0])
    outputs = []
    for t in range(q.shape[1]):
        kt, theta = k[:, t], _gate(inputs, "lr", t)
        code = linear_read(vmat, kt)
        err = linear_read(umat, code) - v[:, t]
        umat, vmat = umat - theta * outer(err, code), vmat - theta * outer(linear_read(umat.mT, err), kt)
        outputs.append(linear_read(umat, linear_read(vmat, q[:, t])))
    return torch.stack(outputs, 1), {"weights": (vmat, umat)}


def titans_family(kind: str, inputs: dict, init: tuple[Tensor, ...], chunk: int) -> tuple[Tensor, dict]:
    """MLP memories with gradients at the chunk-start weights M_{t'} (Titans' parallel form, t' = the chunk start):

    titans   S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; k_t, v_t),  M_t = (1 − α_t) M_{t−1} + S_t,  ℓ = ½‖M(k) − v‖²
    yaad     M_t = (1 − α_t) M_{t−1} − θ_t ∇ℓ_Huber(M_{t'}; k_t, v_t, δ_t)
    moneta   A_t = (1 − α_t) A_{t−1} − θ_t ∇ℓ_p(M_{t'}),  M = A / ‖A‖_q^{q−2}
    memora   M = Softmax((1 − α_t) log M_{t−1} − θ_t ∇ℓ(M_{t'})) per row (mirror descent on the simplex)
    atlas    S_t = η_t S_{t−1} − θ_t ∇ Σ_{i=t−3..t} ℓ(M_{t'}; k_i, v_i),  M_t = (1 − α_t) M_{t−1} + Ŝ_t,
             Ŝ the momentum as the weights see it: Ŝ = NS₅(S) at each chunk start, then Ŝ_t = η_t Ŝ_{t−1} − θ_t u_t

    Chunk-boundary views (ttmem's documented departure for moneta, memora and atlas): inside a chunk the memory
    takes the linear increments M_t = (1 − α_t) M_{t−1} − θ_t u_t and reads see it; the retention map (ℓq
    normalisation, softmax) and Newton–Schulz act when a chunk completes. With chunk size 1 the states equal the
    papers' per-token recurrences.
    """
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    batch, time = q.shape[:2]
    loss = {"titans": half_squared_error, "titans_linear": half_squared_error, "atlas": half_squared_error,
            "memora": half_squared_error,
            "yaad": huber_error, "moneta": smooth_lp_error}[kind]
    start = _batched(init, batch)
    if kind == "moneta":
        accum = start
        weights = tuple(lq_normalise(a) for a in accum)
    elif kind == "memora":
        weights = tuple(torch.softmax(a, -1) for a in start)
        accum = tuple(torch.log(w) for w in weights)  # log M: the mirror-descent coordinates
    else:
        weights, accum = start, None
    momentum = tuple(torch.zeros_like(w) for w in weights) if kind in ("titans", "titans_linear", "atlas") else None
    seen = momentum
    ref = weights
    window = ATLAS_WINDOW if kind == "atlas" else 1
    outputs = []
    for t in range(time):
        terms = [(k[:, i], v[:, i], _token(inputs, "threshold", i)) for i in range(max(0, t - window + 1), t + 1)]
        u = loss_gradient(loss, ref, terms)
        theta, keep = _gate(inputs, "lr", t), 1.0 - _gate(inputs, "forget", t)
        if momentum is not None:
            eta = _gate(inputs, "momentum", t)
            momentum = tuple(eta * s - theta * g for s, g in zip(momentum, u))
            seen = tuple(eta * s - theta * g for s, g in zip(seen, u)) if kind == "atlas" else momentum
            weights = tuple(keep * w + s for w, s in zip(weights, seen))
        else:
            weights = tuple(keep * w - theta * g for w, g in zip(weights, u))
        if accum is not None:
            accum = tuple(keep * a - theta * g for a, g in zip(accum, u))
        outputs.append(mlp_memory(weights, q[:, t]))
        if (t + 1) % chunk == 0:  # chunk complete: views, Newton–Schulz, new chunk-start weights
            if kind == "moneta":
                weights = tuple(lq_normalise(a) for a in accum)
            elif kind == "memora":
                weights = tuple(torch.softmax(z, -1) for z in accum)
                accum = tuple(torch.log(w) for w in weights)
            elif kind == "atlas":
                seen = tuple(cubic_newton_schulz(s, ATLAS_NS_STEPS) for s in momentum)
            ref = weights
    return torch.stack(outputs, 1), {"weights": weights, "momentum": momentum}


def continuum_level(inputs: dict, init: tuple[Tensor, ...], chunk: int) -> tuple[Tensor, dict]:
    """Nested Learning's continuum memory system, one level with update period C = ``chunk``: an MLP
    M(x) = W₂ silu(W₁ x) whose weights take, once per period, the step of the period's summed ℓ2 gradients at the
    period-start weights M^(s); every token of the period reads M^(s):

        y_t = M^(s)(q_t),   M_t = (1 − α_t) M_{t−1} − θ_t ∇ ½‖M(k_t) − v_t‖² at M^(s),   M^(s+1) = M at the period's end
    """
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    ref = weights = _batched(init, q.shape[0])

    def memory(w: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        return linear_read(w[1], F.silu(linear_read(w[0], x)))

    outputs = []
    for t in range(q.shape[1]):
        with torch.enable_grad():
            at = tuple(w.view_as(w) if w.requires_grad else w.detach().requires_grad_() for w in ref)
            loss = half_squared_error(memory(at, k[:, t]), v[:, t], None).sum()
            u = torch.autograd.grad(loss, at, create_graph=True)
        theta, keep = _gate(inputs, "lr", t), 1.0 - _gate(inputs, "forget", t)
        weights = tuple(keep * w - theta * g for w, g in zip(weights, u))
        outputs.append(memory(ref, q[:, t]))
        if (t + 1) % chunk == 0:
            ref = weights
    return torch.stack(outputs, 1), {"weights": weights}


def self_modifying_projection(inputs: dict, init: tuple[Tensor, ...], chunk: int) -> tuple[Tensor, dict]:
    """HOPE's projection memories (Nested Learning): a linear memory W trained by delta gradient descent on the
    target it generates itself, v̂_t = W^(s) v_t, all at the chunk-start weights W^(s), read at W^(s):

        W_t = (1 − α_t) W_{t−1} + [W^(s) (I − θ_t k_t k_tᵀ) − θ_t (W^(s) k_t − W^(s) v_t) k_tᵀ − W^(s)]
        y_t = W^(s) q_t
    """
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    ref = weights = _batched(init, q.shape[0])[0]
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    outputs = []
    for t in range(q.shape[1]):
        kt, theta, keep = k[:, t], _gate(inputs, "lr", t), 1.0 - _gate(inputs, "forget", t)
        error = linear_read(ref, kt) - linear_read(ref, v[:, t])
        weights = keep * weights + (ref @ (eye - theta * outer(kt, kt)) - theta * outer(error, kt) - ref)
        outputs.append(linear_read(ref, q[:, t]))
        if (t + 1) % chunk == 0:
            ref = weights
    return torch.stack(outputs, 1), {"weights": (weights,)}


def paper_recurrence(rule: str, inputs: dict, init: tuple[Tensor, ...], chunk: int) -> tuple[Tensor, dict]:
    """Run preset ``rule`` from the start of a stream: outputs [B, T, H, dv] and the final weights (momentum)."""
    if rule in ("delta", "gated_delta", "theta", "linear_attention"):
        return delta_family(rule, inputs, init, chunk)
    if rule == "theta_lowrank":
        return theta_lowrank(inputs, init, chunk)
    if rule == "continuum":
        return continuum_level(inputs, init, chunk)
    if rule == "self_modifying":
        return self_modifying_projection(inputs, init, chunk)
    return titans_family(rule, inputs, init, chunk)


def gated_delta_rule_kv(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_decay: Tensor, scale: float,
                        state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Gated DeltaNet as its published reference recurrence states it, in that layout: the state h [B, H, K, V]
    is Sᵀ, the decay comes in log space (g_t = log a_t), queries are scaled by ``scale``. Per token:
    h ← e^{g_t} h;  h ← h + k_t (β_t (v_t − hᵀ k_t))ᵀ;  o_t = hᵀ (scale · q_t)."""
    b, t, heads, dk = k.shape
    h = q.new_zeros(b, heads, dk, v.shape[-1]) if state is None else state
    outputs = []
    for i in range(t):
        h = h * log_decay[:, i].exp()[..., None, None]
        error = v[:, i] - torch.einsum("bhkv,bhk->bhv", h, k[:, i])
        h = h + torch.einsum("bhk,bhv->bhkv", k[:, i], beta[:, i, :, None] * error)
        outputs.append(torch.einsum("bhkv,bhk->bhv", h, scale * q[:, i]))
    return torch.stack(outputs, 1), h
