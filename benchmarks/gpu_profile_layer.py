"""Where one ``NeuralMemory`` forward + backward spends its time: kernel launches, kernel time, wall time.

    PYTHONPATH=src python benchmarks/gpu_profile_layer.py                  # CUDA, (2, 1024, 384), one head
    PYTHONPATH=src python benchmarks/gpu_profile_layer.py --device cpu --batch 1 --seq 128 --dim 64

On a GPU the chunked engine issues a few dozen small kernels per chunk, one chunk after another; when the sum of
kernel times is far below the wall time, the step is bound by launching kernels, not by arithmetic. The script
runs the layer under ``torch.profiler`` once after warm-up, prints the wall time, the summed device (or CPU)
operator time, the number of kernel launches, and the top operators, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from layer_vs_titans_pytorch import build_ttmem, layer_step  # noqa: E402

LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def profile_layer(device: str, batch: int, seq: int, dim: int, heads: int, chunk: int, warmup: int = 3) -> dict:
    layer, forward = build_ttmem(dim, heads, chunk)
    layer = layer.to(device)
    step = layer_step(forward, layer, batch, seq, dim, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        sync()
        wall_ms = (time.perf_counter() - start) * 1e3
    events = prof.key_averages()
    on_device = device.startswith("cuda")
    kernel_ms = sum(e.device_time_total if on_device else e.self_cpu_time_total for e in events
                    if (e.device_type.name == "CUDA") == on_device) / 1e3
    launches = sum(e.count for e in events if e.key in LAUNCH_CALLS)
    top = sorted(events, key=lambda e: e.device_time_total if on_device else e.self_cpu_time_total, reverse=True)
    return {
        "device": device, "shape": [batch, seq, dim], "heads": heads, "chunk": chunk,
        "wall_ms_under_profiler": wall_ms, "operator_ms": kernel_ms, "kernel_launches": launches,
        "chunks": -(-seq // chunk),
        "top": [{"name": e.key, "calls": e.count,
                 "ms": (e.device_time_total if on_device else e.self_cpu_time_total) / 1e3} for e in top[:15]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_profile_layer.json"))
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_profile_layer: --device cuda needs a CUDA device; pass --device cpu")
    result = profile_layer(args.device, args.batch, args.seq, args.dim, args.heads, args.chunk)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{args.device} {tuple(result['shape'])} heads={args.heads} chunk={args.chunk}: "
          f"wall {result['wall_ms_under_profiler']:.1f} ms under the profiler, operator time "
          f"{result['operator_ms']:.1f} ms, {result['kernel_launches']} kernel launches over {result['chunks']} chunks")
    print("| operator | calls | ms |\n|---|---|---|")
    for row in result["top"]:
        print(f"| {row['name'][:60]} | {row['calls']} | {row['ms']:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
