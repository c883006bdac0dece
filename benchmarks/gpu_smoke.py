"""CUDA smoke checks: the exactness properties the test suite proves on a CPU, run once on a GPU.

    PYTHONPATH=src python benchmarks/gpu_smoke.py             # CUDA when torch sees one, else CPU
    PYTHONPATH=src python benchmarks/gpu_smoke.py --device cpu

Checks, each printed as one line (``ok`` or ``FAIL`` with the error found):

* ``memorize``: for every rule preset, the chunked engine (``impl="chunked"``) against the token-by-token
  reference (``impl="reference"``) in float64 on the device: outputs, final weights and the gradients with respect
  to q, k, v, every gate and learned initial weights, at a length that is not a multiple of the chunk and with an
  incoming state that ends mid-chunk. Relative error at most 1e-8, as in ``tests/memory/test_equivalence.py``.
* decode: for every architecture, a small model on the device reads a prompt and then decodes token by token;
  the logits equal one full forward within 1e-4 (float32, TF32 off), as in ``tests/models/test_language_model.py``.
* device agreement (CUDA only): each of those models' full-forward logits on the device equal the same model's
  logits on the CPU within 1e-4.

The script exits with status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

from ttmem.memory import RULES, get_rule, initial_state, memorize
from ttmem.models import ARCHITECTURES, ModelConfig, build_model

MEMORY_TOL, DECODE_TOL = 1e-8, 1e-4
# As the model tests: prompts end mid-chunk (4), mid-segment (8) and past the window (8).
SMALL_MODEL = dict(dim=32, depth=2, heads=2, window=8, segment_len=8, chunk_size=4, persistent_tokens=2,
                   cms_periods=(4, 8, 16), mlp_ratio=2.0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def memory_problem(rule_name: str, time: int, device: str, seed: int) -> tuple[dict, tuple]:
    """float64 inputs of ``memorize`` (gates where the inner loop is stable) and learned initial weights."""
    rule = get_rule(rule_name)
    gen = torch.Generator().manual_seed(seed)
    batch, heads, dim = 2, 2, 8

    def rand(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    gates = (batch, time, heads)
    inputs = {"q": torch.randn(batch, time, heads, dim, generator=gen, dtype=torch.float64),
              "k": torch.nn.functional.normalize(torch.randn(batch, time, heads, dim, generator=gen,
                                                             dtype=torch.float64), dim=-1),
              "v": torch.randn(batch, time, heads, dim, generator=gen, dtype=torch.float64),
              "lr": rand(*gates, high=0.1), "forget": rand(*gates, high=0.02)}
    if rule.momentum:
        inputs["momentum"] = rand(*gates)
    if rule.objective.uses_threshold:
        inputs["threshold"] = rand(*gates, low=0.3, high=1.5)
    weights = tuple(0.5 * torch.randn(heads, o, i, generator=gen, dtype=torch.float64)
                    for o, i in rule.architecture.shapes(dim, dim))
    inputs = {name: t.to(device).requires_grad_(True) for name, t in inputs.items()}
    return inputs, tuple(w.to(device).requires_grad_(True) for w in weights)


def check_memorize(rule: str, device: str, chunk: int = 4, time: int = 13) -> float:
    """Largest relative error between the chunked engine and the reference (values and gradients)."""
    inputs, weights = memory_problem(rule, time, device, seed=1)
    warm_up, _ = memory_problem(rule, 5, device, seed=2)
    warm_up = {name: t.detach() for name, t in warm_up.items()}
    results = {}
    for impl in ("chunked", "reference"):
        state = initial_state(rule, 2, 2, 8, 8, weights=weights, dtype=torch.float64, device=device)
        state = memorize(**warm_up, rule=rule, chunk_size=chunk, state=state, impl=impl)[1]  # ends mid-chunk
        out, state = memorize(**inputs, rule=rule, chunk_size=chunk, state=state, impl=impl)
        gen = torch.Generator().manual_seed(7)
        probe = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device)).sum()
                    for t in (out, *state.weights))
        leaves = [inputs[name] for name in sorted(inputs)] + list(weights)
        grads = torch.autograd.grad(probe, leaves, allow_unused=True)
        results[impl] = [out, *state.weights, *grads]
    worst = 0.0
    for a, b in zip(results["chunked"], results["reference"], strict=True):
        if (a is None) != (b is None):
            return float("inf")  # one path gives a gradient the other does not
        if b is not None:
            worst = max(worst, rel_err(a, b) if b.norm() > 0 else float((a - b).abs().max()))
    return worst


def check_decode(arch: str, device: str) -> tuple[float, float | None]:
    """(decode vs full forward on the device, device vs CPU forward or None on a CPU): largest abs error."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, **SMALL_MODEL)).eval()
    tokens = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cpu_logits = model(tokens).logits if device != "cpu" else None
        model, tokens = model.to(device), tokens.to(device)
        full = model(tokens).logits
        out = model(tokens[:, :11])
        pieces = [out.logits]
        for t in range(11, tokens.shape[1]):
            out = model(tokens[:, t : t + 1], out.state)
            pieces.append(out.logits)
    decode_err = float((torch.cat(pieces, dim=1) - full).abs().max())
    device_err = None if cpu_logits is None else float((full.cpu() - cpu_logits).abs().max())
    return decode_err, device_err


def run_smoke(device: str, rules: tuple[str, ...] = tuple(RULES), archs: tuple[str, ...] = ARCHITECTURES,
              log: Callable[[str], None] = print) -> list[dict]:
    """Run every check; return one dict per check (name, error, tolerance, ok)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    checks = []

    def record(name: str, error: float, tol: float) -> None:
        ok = error <= tol  # NaN fails
        checks.append({"check": name, "error": error, "tolerance": tol, "ok": ok})
        log(f"{'ok  ' if ok else 'FAIL'} {name}: error {error:.3g} (tolerance {tol:g})")

    for rule in rules:
        record(f"memorize chunked == reference, float64, rule {rule}, {device}", check_memorize(rule, device),
               MEMORY_TOL)
    for arch in archs:
        decode_err, device_err = check_decode(arch, device)
        record(f"decode == full forward, {arch}, {device}", decode_err, DECODE_TOL)
        if device_err is not None:
            record(f"forward on {device} == forward on cpu, {arch}", device_err, DECODE_TOL)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    checks = run_smoke(args.device)
    failed = [c["check"] for c in checks if not c["ok"]]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed on {args.device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
