"""The arithmetic behind a training step's speed: how long its matrix products alone take, against the whole step.

    OMP_NUM_THREADS=1 python benchmarks/flop_budget.py --threads 1 --seqs 256 1024

For every architecture's tiny preset (default: the Transformer peer and the Titans family) one training step
(forward, backward and an AdamW update on random bytes, batch ``--batch``) runs once under a dispatch mode
that records every matrix product the step issues (``mm``, ``addmm``: weights shared by every token, "dense";
``bmm``, ``baddbmm`` (in place too): batched products, which in a memory model are the memory engine's
per-sequence weights, "batched"), with its operand shapes and strides. Then, on the same machine and in the
same process:

- each recorded product is replayed alone, at its own shapes and strides, and timed (median of
  ``--replays`` runs after a warm-up); summed over the step's calls this is ``matmul_s``, the time the step's
  matrix products take with nothing else running between them and their operands hot in cache;
- the step itself is timed (median of ``--steps`` runs, every model stepping in turn, so load drift is shared).

From these the bound: a step cannot take less than its products take, so a model's tokens/s cannot exceed
the peer's measured tokens/s × t_peer / matmul_s(model) (``ceiling_ratio``, every non-matmul cost removed;
sdpa, convolutions and elementwise work all counted as free). ``ceiling_ratio_peer_overhead`` adds back the
peer's own non-matmul seconds (as if the model's elementwise and bookkeeping work cost no more than the
Transformer's). Where ``ceiling_ratio`` is below a target, no implementation that runs the same products
through these matmul kernels reaches it on this machine; where it is above, the gap is the rest (``other_s``),
whose kernels and the bytes they move are counted too (``other_kernels``, ``other_gbytes``).

FLOPs are 2·m·n·k per product (the products' own closed form; the test checks them against torch's
``FlopCounterMode``). Writes JSON (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ttmem.models import ARCHITECTURES, build_model, count_parameters
from ttmem.models.presets import VARIANTS
from ttmem.train.config import parse_overrides

sys.path.insert(0, str(Path(__file__).resolve().parent))

from models import training_step  # noqa: E402  (the models benchmark's step, so both time the same work)

DEFAULT_ARCHS = ("transformer", "lmm", "mac", "mag", "mal", "hope")
_DENSE = {"mm": (0, 1), "addmm": (1, 2)}     # op -> positions of the two matrix operands
_BATCHED = {"bmm": (0, 1), "baddbmm": (1, 2), "baddbmm_": (1, 2)}
_ALL = {**_DENSE, **_BATCHED}


def _signature(t: torch.Tensor) -> tuple:
    return tuple(t.shape), tuple(t.stride()), t.dtype


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


class MatmulRecorder(TorchDispatchMode):
    """Counts every matrix product by (op, operand shapes and strides); ``calls[key]`` = how many times. Every
    other kernel that computes (views, which only relabel memory, are left out) is counted in ``other_kernels``,
    with the bytes of its tensor inputs and outputs in ``other_bytes``: the traffic of the step's non-matmul work."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()
        self.other_kernels = 0
        self.other_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in _ALL:
            key = (name, *(_signature(a) if isinstance(a, torch.Tensor) else a for a in args))
            self.calls[key] += 1
        out = func(*args, **kwargs)
        if name not in _ALL:
            inputs, outputs = _tensors(list(args) + list(kwargs.values())), _tensors(out)
            storages = {t.untyped_storage().data_ptr() for t in inputs}
            is_view = not name.endswith("_") and outputs and all(
                t.untyped_storage().data_ptr() in storages for t in outputs)
            if outputs and not is_view:
                self.other_kernels += 1
                self.other_bytes += sum(t.numel() * t.element_size() for t in inputs + outputs)
        return out


def product_flops(key: tuple) -> int:
    """2·m·n·k (times the batch for bmm / baddbmm) of one recorded call."""
    name = key[0]
    first, second = _ALL[name]
    a, b = key[1 + first][0], key[1 + second][0]
    batch = a[0] if name in _BATCHED else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def _materialise(arg):
    if isinstance(arg, tuple) and len(arg) == 3 and isinstance(arg[2], torch.dtype):
        shape, stride, dtype = arg  # one random storage viewed with the recorded strides (broadcasts included)
        size = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
        return torch.randn(size, dtype=dtype).as_strided(shape, stride)
    return arg


def replay_seconds(key: tuple, replays: int) -> float:
    """Median seconds of one call with this signature, run alone on random operands of the same layout."""
    func = getattr(torch.ops.aten, key[0]).default
    args = [_materialise(a) for a in key[1:]]
    func(*args)
    times = []
    for _ in range(replays):
        start = time.perf_counter()
        func(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def record_step(step) -> MatmulRecorder:
    """The products and other kernels of one call of ``step``."""
    recorder = MatmulRecorder()
    with recorder:
        step()
    return recorder


def budget(calls: Counter, replays: int) -> dict:
    """FLOPs and replayed seconds of a step's products, dense and batched."""
    out = {"dense_flops": 0, "batched_flops": 0, "dense_matmul_s": 0.0, "batched_matmul_s": 0.0,
           "dense_calls": 0, "batched_calls": 0}
    for key, count in calls.items():
        kind = "dense" if key[0] in _DENSE else "batched"
        out[f"{kind}_flops"] += count * product_flops(key)
        out[f"{kind}_matmul_s"] += count * replay_seconds(key, replays)
        out[f"{kind}_calls"] += count
    out["matmul_s"] = out["dense_matmul_s"] + out["batched_matmul_s"]
    out["flops"] = out["dense_flops"] + out["batched_flops"]
    return out


def derive(rows: dict, peer: str) -> None:
    """Ratios and ceilings against the peer, from the measured and replayed seconds (in place)."""
    p = rows[peer]
    for row in rows.values():
        row["other_s"] = row["step_s"] - row["matmul_s"]
        row["speed_ratio"] = p["step_s"] / row["step_s"]
        row["flops_ratio"] = row["flops"] / p["flops"]
        row["ceiling_ratio"] = p["step_s"] / row["matmul_s"]
        row["ceiling_ratio_peer_overhead"] = p["step_s"] / (row["matmul_s"] + p["other_s"])
        for kind in ("dense", "batched"):
            seconds = row[f"{kind}_matmul_s"]
            row[f"{kind}_gflops_per_s"] = row[f"{kind}_flops"] / seconds / 1e9 if seconds else None


def run_table(archs: list[str], peer: str, batch: int, seq: int, steps: int, replays: int,
              overrides: dict | None = None) -> dict:
    """``overrides``: ModelConfig fields set on every model but the peer (e.g. a chunk size)."""
    names = [f"{peer}-tiny"] + [f"{a}-tiny" for a in archs if a != peer]
    models, step_fns, rows = {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build_model(name, **({} if name == names[0] else overrides or {}))
        step_fns[name] = training_step(models[name], batch, seq, "cpu")
        step_fns[name]()  # warm-up
        recorder = record_step(step_fns[name])
        rows[name] = {"parameters": count_parameters(models[name]), **budget(recorder.calls, replays),
                      "other_kernels": recorder.other_kernels, "other_gbytes": recorder.other_bytes / 1e9}
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(steps):  # models in turn: load drift is shared
        for name in names:
            start = time.perf_counter()
            step_fns[name]()
            times[name].append(time.perf_counter() - start)
    for name in names:
        rows[name]["step_s"] = statistics.median(times[name])
        rows[name]["step_runs_s"] = times[name]
        rows[name]["tokens_per_s"] = batch * seq / rows[name]["step_s"]
    derive(rows, names[0])
    return rows


def print_table(rows: dict, batch: int, seq: int, peer: str) -> None:
    print(f"\nbatch {batch} x seq {seq}: GFLOP per training step, seconds, ratios against {peer}")
    print("| model | GFLOP dense | GFLOP batched | × FLOPs | step s | matmuls alone s (dense + batched) | other s "
          "| other kernels (GB moved) | batched GFLOP/s | tokens/s × | ceiling × | ceiling with peer's other × |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        rate = "" if r["batched_gflops_per_s"] is None else f"{r['batched_gflops_per_s']:.0f}"
        print(f"| {name} | {r['dense_flops'] / 1e9:.2f} | {r['batched_flops'] / 1e9:.2f} | {r['flops_ratio']:.2f} | "
              f"{r['step_s']:.3f} | {r['matmul_s']:.3f} ({r['dense_matmul_s']:.3f} + {r['batched_matmul_s']:.3f}) | "
              f"{r['other_s']:.3f} | {r['other_kernels']:,} ({r['other_gbytes']:.1f}) | {rate} | "
              f"{r['speed_ratio']:.2f} | {r['ceiling_ratio']:.2f} | {r['ceiling_ratio_peer_overhead']:.2f} |",
              flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), choices=[*ARCHITECTURES, *VARIANTS])
    parser.add_argument("--peer", default="transformer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqs", type=int, nargs="+", default=[256])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model (median)")
    parser.add_argument("--replays", type=int, default=9, help="timed replays per distinct product (median)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="ModelConfig fields for every model but the peer, e.g. chunk_size=64")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flop_budget.json"))
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        for arch in args.archs:  # refuse an unknown field or a bad value before any timing
            if arch != args.peer:
                build_model(f"{arch}-tiny", **overrides)
    except (ValueError, TypeError) as error:
        parser.error(f"--set: {error}")
    for name, value in (("batch", args.batch), ("steps", args.steps), ("replays", args.replays)):
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
               "tables": {}}
    for seq in args.seqs:
        rows = run_table(args.archs, args.peer, args.batch, seq, args.steps, args.replays, overrides)
        results["tables"][str(seq)] = rows
        print_table(rows, args.batch, seq, args.peer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
