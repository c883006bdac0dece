"""``torch.compile`` with ``fullgraph=True``: no graph breaks in the memory layer or a whole model's training
step, and the compiled function gives the eager results (fp32 tolerance).

The default suite traces with the ``aot_eager`` backend (Dynamo plus AOTAutograd's forward and backward graphs,
no code generation: seconds) for the memory layer and MAC; the other architectures (all pass) and inductor's
code generation (minutes on a CPU for an unrolled chunk loop) are marked slow.

Complexity gating, pages and kinetics (``NeuralMemory(symplectic=...)``) compile with ``fullgraph=True`` too: page
decisions are ``torch.where`` on tensors and the counters are in-place buffer updates, so nothing reads a value
back to the host."""

from __future__ import annotations

import pytest
import torch

from tests.layers.test_paging import ALL_ON, DMD_ON
from ttmem.layers import NeuralMemory
from ttmem.models import build_model

TINY = dict(dim=32, depth=1, heads=2, window=8, segment_len=8, chunk_size=4, cms_periods=(4, 8))


def _layer_loss(layer: NeuralMemory):
    def loss(x: torch.Tensor) -> torch.Tensor:
        y, state = layer(x)
        return y.square().mean() + sum(w.square().mean() for w in state.memory.weights)
    return loss


def _model_loss(model):
    def loss(ids: torch.Tensor) -> torch.Tensor:
        logits = model(ids[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    return loss


def _compare(fn, arg, params, backend: str) -> None:
    """Compiled (fullgraph) loss and gradients equal eager ones."""
    torch._dynamo.reset()
    eager = fn(arg)
    eager_grads = torch.autograd.grad(eager, params)
    compiled = torch.compile(fn, fullgraph=True, backend=backend)(arg)
    compiled_grads = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rule", ["titans", "delta"])
def test_memory_layer_compiles_without_graph_breaks(rule):
    torch.manual_seed(0)
    layer = NeuralMemory(16, heads=2, chunk_size=4, rule=rule)
    _compare(_layer_loss(layer), torch.randn(2, 10, 16), list(layer.parameters()), "aot_eager")


PAGING = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=0.0, kinetics_coupling=True,
              kinetics_mix=0.5)


def test_memory_layer_with_gating_pages_and_kinetics_compiles_without_graph_breaks():
    torch.manual_seed(0)
    layer = NeuralMemory(8, heads=1, chunk_size=4, symplectic=PAGING)
    paging = layer.symplectic
    x = torch.randn(2, 6, 8)  # one chunk boundary (a page decision) and a chunk in progress
    _compare(_layer_loss(layer), x, list(layer.parameters()), "aot_eager")
    # eager then compiled, each over 1 boundary × 2 samples, threshold 0: every boundary changes the page
    assert int(paging.page_switch_events) == int(paging.page_threshold_crossings) == 4


@pytest.mark.slow
@pytest.mark.parametrize("options", [ALL_ON, DMD_ON], ids=["budget_hierarchical_phase_quorum", "dmd_codebook"])
def test_memory_layer_with_every_option_compiles_without_graph_breaks(options):
    torch.manual_seed(0)
    layer = NeuralMemory(8, heads=1, chunk_size=4, symplectic=options)
    _compare(_layer_loss(layer), torch.randn(2, 10, 8), list(layer.parameters()), "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lmm", "hope"])
def test_model_with_gating_and_pages_compiles_without_graph_breaks(arch):
    torch.manual_seed(0)
    fields = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=0.0, kinetics_mix=0.5,
                  complexity_args={"phase_mix": 0.5, "quorum_mix": 0.3})
    model = build_model(f"{arch}-tiny", **TINY, **fields, page_routing="manifold")
    ids = torch.randint(0, 256, (2, 11))
    _compare(_model_loss(model), ids, [p for p in model.parameters() if p.requires_grad], "aot_eager")


@pytest.mark.parametrize("arch", [
    "mac",
    *(pytest.param(a, marks=pytest.mark.slow)
      for a in ("lmm", "mag", "mal", "hope", "gated_deltanet", "theta_lm", "swa_transformer", "transformer")),
])
def test_model_training_step_compiles_without_graph_breaks(arch):
    torch.manual_seed(0)
    model = build_model(f"{arch}-tiny", **TINY)
    ids = torch.randint(0, 256, (2, 11))
    _compare(_model_loss(model), ids, [p for p in model.parameters() if p.requires_grad], "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lmm", "mac"])
def test_model_training_step_compiles_with_inductor(arch):
    torch.manual_seed(0)
    model = build_model(f"{arch}-tiny", **TINY)
    ids = torch.randint(0, 256, (2, 11))
    _compare(_model_loss(model), ids, [p for p in model.parameters() if p.requires_grad], "inductor")


def _decode_compare(arch: str, backend: str, tokens: int = 7) -> None:
    """Decoding steps as ``generate()`` runs them (inference mode, momentum updated in place when eager), compiled
    with ``fullgraph=True``, give the eager steps' logits token after token, each path carrying its own state."""
    from ttmem.memory import decode_in_place

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(f"{arch}-tiny", **TINY).eval()
    ids = torch.randint(0, 256, (1, 10 + tokens))
    step = torch.compile(model, fullgraph=True, backend=backend)
    with torch.inference_mode(), decode_in_place():
        # both start from their own prefill (eager in-place decoding consumes its state)
        eager_state, compiled_state = model(ids[:, :10]).state, model(ids[:, :10]).state
        for t in range(10, 10 + tokens):  # crosses chunk (4) and segment (8) boundaries
            eager = model(ids[:, t:t + 1], eager_state)
            compiled = step(ids[:, t:t + 1], compiled_state)
            torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-5, atol=1e-5)
            eager_state, compiled_state = eager.state, compiled.state


@pytest.mark.parametrize("arch", ["lmm", pytest.param("hope", marks=pytest.mark.slow),
                                  pytest.param("swa_transformer", marks=pytest.mark.slow)])
def test_decode_step_compiles_without_graph_breaks(arch):
    _decode_compare(arch, "aot_eager")


@pytest.mark.slow
def test_decode_step_compiles_with_inductor():
    _decode_compare("lmm", "inductor")
