"""Model access for the serving engine and the timing audit.

A backend turns tokens into a state and next-token logits; the engine never looks inside a state.

    initial_state() -> state
    extend(state, tokens) -> (new_state, logits [vocab])   # never mutates ``state``
    slice_state(state, length) -> state                      # only when ``supports_slicing``

``supports_slicing`` says whether the state after n tokens contains the state after any m < n tokens
(a key/value cache does, a fixed-size memory does not); a prefix cache then reuses any cached prefix.

Backends here:
- TinyLM: a small pre-norm language model, with either a causal attention mixer (state = per-layer
  key/value cache, grows with the context) or a θ-memory mixer (the memory engine's ``theta`` rule;
  state = per-layer [H, dh, dh] weights, fixed size, one gated ℓ2 gradient step per token). Its
  prefill really computes, so a prefix-cache hit really saves work.
- ModelBackend: any ``ttmem.models`` language model through ``forward(input_ids, state)``.

``build_backend(name)`` makes one from a picklable name, so a server can be started in another process:
"tiny-attention", "tiny-theta" (TinyLM, optional ``:vocab``, e.g. "tiny-theta:16"), or a model preset
("transformer-tiny", "theta_lm-tiny", ...).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.memory import MemoryState, get_rule, initial_state, run_memory


@runtime_checkable
class Backend(Protocol):
    vocab_size: int
    supports_slicing: bool

    def initial_state(self) -> Any: ...

    def extend(self, state: Any, tokens: Sequence[int]) -> tuple[Any, Tensor]: ...

    def slice_state(self, state: Any, length: int) -> Any: ...


def check_tokens(tokens: Sequence[int], vocab_size: int, name: str = "tokens") -> list[int]:
    """Validate a token list: non-empty ints in [0, vocab_size)."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(tokens).__name__}")
    out = []
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"{name} must contain ints, got {type(t).__name__}")
        if not 0 <= t < vocab_size:
            raise ValueError(f"{name} entries must be in [0, {vocab_size}), got {t}")
        out.append(t)
    if not out:
        raise ValueError(f"{name} must be non-empty")
    return out


class _AttentionMixer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [T, d]; cache (K, V) each [H, n, dh] -> y [T, d], cache [H, n + T, dh]."""
        t = x.shape[0]
        q, k, v = self.qkv(x).view(t, 3, self.heads, self.dim_head).permute(1, 2, 0, 3)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 1), torch.cat([cache[1], v], 1)
        n = k.shape[1] - t
        mask = None
        if t > 1:  # query i (absolute n + i) sees keys j <= n + i
            mask = torch.arange(n + t).unsqueeze(0) <= (torch.arange(t) + n).unsqueeze(1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(0, 1).reshape(t, -1)), (k, v)


class _ThetaMixer(nn.Module):
    """The memory engine's ``theta`` rule (θMN): W ← W − θ_t (W k_t − v_t) k_tᵀ per token, y_t = W q_t."""

    rule = get_rule("theta")

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dim_head = heads, dim // heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.lr_gate = nn.Linear(dim, heads)

    def forward(self, x: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [T, d]; weights [H, dh, dh] -> y [T, d], weights; the same work for every token (the exact
        per-token delta-rule path for a prompt, the one-token step for a decoded token)."""
        t = x.shape[0]
        q, k, v = self.qkv(x).view(t, 3, self.heads, self.dim_head).permute(1, 2, 0, 3)  # [H, T, dh]
        k = F.normalize(k, dim=-1)
        lr = torch.sigmoid(self.lr_gate(x)).T  # [H, T]
        if weights is None:
            state = initial_state(self.rule, 1, self.heads, self.dim_head, self.dim_head, dtype=x.dtype)
        else:
            state = MemoryState(weights=(weights.unsqueeze(0),), rule=self.rule.name)
        y, state = run_memory(self.rule, q[None], k[None], v[None], lr[None], None, None, None, 64, state)
        return self.out(y[0].transpose(0, 1).reshape(t, -1)), state.weights[0][0]


class TinyLM(nn.Module):
    """Pre-norm LM: embedding, ``depth`` x (mixer + MLP), norm, tied head. mixer: "attention" or "theta"."""

    def __init__(
        self,
        vocab_size: int = 32,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mixer: str = "attention",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if mixer not in ("attention", "theta"):
            raise ValueError(f"mixer must be 'attention' or 'theta', got {mixer!r}")
        if vocab_size < 2 or dim <= 0 or depth <= 0 or heads <= 0 or dim % heads:
            raise ValueError("need vocab_size >= 2 and positive depth, heads with dim a multiple of heads")
        torch.manual_seed(seed)
        self.vocab_size, self.mixer_kind = vocab_size, mixer
        self.embed = nn.Embedding(vocab_size, dim)
        cls = _AttentionMixer if mixer == "attention" else _ThetaMixer
        self.mixers = nn.ModuleList(cls(dim, heads) for _ in range(depth))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            for _ in range(depth)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.final = nn.LayerNorm(dim)
        self.eval()

    @torch.no_grad()
    def forward(self, tokens: Tensor, state: list | None = None) -> tuple[Tensor, list]:
        """tokens [T] long, state (one entry per layer or None) -> logits [T, V], new state."""
        x = self.embed(tokens)
        new_state = []
        for i, (mixer, mlp, norm) in enumerate(zip(self.mixers, self.mlps, self.norms, strict=True)):
            y, s = mixer(norm(x), None if state is None else state[i])
            x = x + y
            x = x + mlp(x)
            new_state.append(s)
        return self.final(x) @ self.embed.weight.T, new_state


class TinyLMBackend:
    """Backend over a TinyLM; attention states can be sliced to any prefix, θ-memory states cannot."""

    def __init__(self, model: TinyLM) -> None:
        if not isinstance(model, TinyLM):
            raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
        self.model = model
        self.vocab_size = model.vocab_size
        self.supports_slicing = model.mixer_kind == "attention"

    def initial_state(self) -> list | None:
        return None

    def extend(self, state: list | None, tokens: Sequence[int]) -> tuple[list, Tensor]:
        tokens = check_tokens(tokens, self.vocab_size)
        logits, new_state = self.model(torch.tensor(tokens), state)  # functional: input state untouched
        return new_state, logits[-1]

    def slice_state(self, state: list, length: int) -> list:
        if not self.supports_slicing:
            raise ValueError("θ-memory states cannot be cut to a prefix")
        return [(k[:, :length], v[:, :length]) for k, v in state]


class ModelBackend:
    """Backend over a ``ttmem.models`` LanguageModel (``forward(input_ids [1, T], state)``).

    The state is deep-copied before every call so that a cached state is never modified in place.
    """

    supports_slicing = False

    def __init__(self, model: nn.Module) -> None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if not isinstance(vocab, int):
            raise TypeError("model must be a ttmem LanguageModel with config.vocab_size")
        self.model, self.vocab_size = model.eval(), vocab

    def initial_state(self) -> Any:
        return None

    @torch.no_grad()
    def extend(self, state: Any, tokens: Sequence[int]) -> tuple[Any, Tensor]:
        tokens = check_tokens(tokens, self.vocab_size)
        out = self.model(torch.tensor([tokens]), state=copy.deepcopy(state))
        return out.state, out.logits[0, -1]

    def slice_state(self, state: Any, length: int) -> Any:
        raise ValueError("slicing is not available for this model's state")


def build_backend(name: str, seed: int = 0) -> Backend:
    """Backend from a name: "tiny-attention[:vocab]", "tiny-theta[:vocab]" or a ``ttmem.models`` preset."""
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty string")
    base, _, vocab = name.partition(":")
    if base in ("tiny-attention", "tiny-theta"):
        if vocab and not vocab.isdigit():
            raise ValueError(f"vocab size after ':' must be an int, got {vocab!r}")
        mixer = "attention" if base == "tiny-attention" else "theta"
        return TinyLMBackend(TinyLM(vocab_size=int(vocab or 32), mixer=mixer, seed=seed))
    from ttmem.models import build_model  # models are only needed for presets

    torch.manual_seed(seed)
    return ModelBackend(build_model(name))
