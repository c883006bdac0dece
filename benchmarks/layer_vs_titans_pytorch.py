"""Side-by-side benchmark: ttmem's ``NeuralMemory`` layer against titans-pytorch 0.5.5.

Both layers run in the same invocation on the same machine, each configuration in fresh
interpreters: titans-pytorch from its own virtual environment (``.venv-titans``, never a
dependency of ttmem), ttmem from the interpreter running this script.

Measured per configuration (dim 384, chunk 64, one or four heads, inputs (2, 1024, 384) and
(1, 4096, 384)):

* time: forward + backward of the layer (input requires grad, gradients of all parameters),
  median of ``--repeats`` runs after ``--warmup`` runs, in a subprocess with default settings.
* peak memory: in a second subprocess, after one warm-up step, the kernel's peak-RSS mark is
  reset (``/proc/self/clear_refs``), and the increase of the peak over the resident size just
  before one more step is reported. glibc is told to serve every block over 64 KiB with mmap
  (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go back to the kernel and the resident size
  follows the live tensors instead of the allocator's cache. A calibration step that allocates
  a known 256 MiB is measured the same way and written next to the results. As a cross-check,
  the peak of torch's own allocations during one step is read from the profiler's memory events.
* matmul throughput: fp32 square matmuls (1024..4096) at the start and the end of the run; the
  best figure is the machine peak that the memory update is compared against.
* FLOPs of the memory update: derived analytically for the chunked MLP memory (see
  ``chunked_memory_flops``) and cross-checked with ``torch.utils.flop_counter.FlopCounterMode``
  on ``ttmem.memory.memorize`` and on the layer. The fraction of peak uses the analytic count
  and the time of ``memorize`` alone (forward + backward) at the layer's shapes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".venv-titans"
PEER_TORCH = "torch==2.13.0"
PEER_PACKAGE = "titans-pytorch==0.5.5"
PEER_WORKER = Path(__file__).resolve().parent / "_titans_pytorch_worker.py"
DIM, CHUNK = 384, 64
SHAPES = ((2, 1024), (1, 4096))
HEADS = (1, 4)
TARGET_SPEEDUP, TARGET_MEMORY_FRACTION = 5.0, 0.25
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
SEMANTIC_DIFFERENCES = [
    "titans-pytorch takes every chunk's gradient at the weights the call starts with; ttmem takes "
    "each chunk's gradients at that chunk's start weights (Titans Eq. 16-18), so chunks depend on "
    "each other and are processed in sequence.",
    "titans-pytorch reads per chunk: every query of a chunk reads one weight snapshot; ttmem reads "
    "after each token's write (dual form, per token).",
    "titans-pytorch gates momentum and decay per chunk (from the chunk's mean input); ttmem gates "
    "step size, momentum and forgetting per token. Both take the step size per token.",
    "titans-pytorch's inner loss is the mean squared error over the feature axis; ttmem's is "
    "1/2 ||M(k) - v||^2 (a constant factor on the gradient).",
    "titans-pytorch has no short convolution on q/k/v and normalises q/k with RMSNorm; ttmem's "
    "layer has a causal depthwise convolution (kernel 4) and l2-normalised q/k.",
]


# ----------------------------------------------------------------------------- peer environment
def peer_setup_commands(venv: Path = PEER_VENV) -> list[list[str]]:
    """The commands that build the peer environment; torch is pinned first so nothing replaces it."""
    base = getattr(sys, "_base_executable", None) or "python3"
    py = str(venv / "bin" / "python")
    return [
        [base, "-m", "venv", str(venv)],
        [py, "-m", "pip", "install", "-q", PEER_TORCH],
        [py, "-m", "pip", "install", "--dry-run", "-q", "--report", "-", PEER_PACKAGE],
        [py, "-m", "pip", "install", "-q", PEER_PACKAGE],
    ]


def peer_is_ready(python: Path) -> bool:
    """True when ``python`` imports titans-pytorch 0.5.5 next to torch 2.13.0."""
    if not python.exists():
        return False
    probe = (
        "import importlib.metadata as m, torch, titans_pytorch;"
        "print(m.version('titans-pytorch'), torch.__version__.split('+')[0])"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    want = f"{PEER_PACKAGE.split('==')[1]} {PEER_TORCH.split('==')[1]}"
    return done.returncode == 0 and done.stdout.strip().endswith(want)


def ensure_peer_env(venv: Path = PEER_VENV) -> Path:
    """Create the peer environment if it is missing (idempotent); return its python."""
    python = venv / "bin" / "python"
    if peer_is_ready(python):
        return python
    make_venv, install_torch, dry_run, install_peer = peer_setup_commands(venv)
    if not python.exists():
        subprocess.run(make_venv, check=True)
    subprocess.run(install_torch, check=True)
    report = json.loads(subprocess.run(dry_run, check=True, capture_output=True, text=True).stdout)
    pulled = [item["metadata"]["name"] for item in report.get("install", [])]
    foreign = [name for name in pulled if name.lower() in ("torch", "triton") or name.startswith("nvidia")]
    if foreign:
        raise RuntimeError(f"{PEER_PACKAGE} would install {foreign}; refusing to replace {PEER_TORCH}")
    subprocess.run(install_peer, check=True)
    if not peer_is_ready(python):
        raise RuntimeError(f"{python} does not import {PEER_PACKAGE} with {PEER_TORCH}")
    return python


# ----------------------------------------------------------------------------- measurement
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_increase(step: Callable[[], None]) -> dict:
    """Peak resident size reached during one ``step()`` above the resident size just before it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return {"peak_increase_mib": (peak - before) / 1024, "rss_before_mib": before / 1024,
            "peak_rss_mib": peak / 1024}


def torch_allocation_peak_mib(step: Callable[[], None]) -> float:
    """Peak of the running sum of torch's own CPU allocations and frees during one ``step()``.

    An independent check of the RSS figure: it sees only tensor storage (no allocator slack, no
    library buffers), read from the profiler's memory events in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak / 2**20


def time_steps(step: Callable[[], None], warmup: int, repeats: int) -> dict:
    """Median wall time of ``step()`` in milliseconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times}


def count_matmul_flops(step: Callable[[], None]) -> tuple[int, dict]:
    """FLOPs that ``FlopCounterMode`` attributes to one ``step()``: total and per operator."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def matmul_throughput(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> dict:
    """fp32 ``a @ b`` throughput in GFLOP/s per square size (2 n^3 FLOPs per product)."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        timing = time_steps(lambda a=a, b=b: torch.mm(a, b), warmup=1, repeats=repeats)
        out[str(n)] = 2 * n**3 / (timing["median_ms"] * 1e-3) / 1e9
    return {"gflops_by_size": out, "best_gflops": max(out.values())}


def layer_step(forward: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module,
               batch: int, seq: int, dim: int) -> Callable[[], None]:
    """One forward + backward of ``forward`` on a fixed [batch, seq, dim] input that requires grad."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, seq, dim, generator=gen).requires_grad_(True)
    grad_y = torch.randn(batch, seq, dim, generator=gen)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        forward(x).backward(grad_y)

    return step


# ----------------------------------------------------------------------------- ttmem side
def build_ttmem(dim: int, heads: int, chunk: int) -> tuple[torch.nn.Module, Callable]:
    from ttmem.layers import NeuralMemory

    layer = NeuralMemory(dim, heads=heads, chunk_size=chunk, rule="titans")
    return layer, lambda x: layer(x)[0]


def memorize_step(batch: int, seq: int, heads: int, dim_head: int, chunk: int) -> Callable[[], None]:
    """Forward + backward of ``ttmem.memory.memorize`` alone (titans rule) at the layer's shapes."""
    from ttmem.memory import memorize

    gen = torch.Generator().manual_seed(2)
    shape = (batch, seq, heads, dim_head)
    q, k = (torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(shape, generator=gen)
    gates = [torch.randn(batch, seq, heads, generator=gen) for _ in range(3)]
    leaves = [t.requires_grad_(True) for t in (q, k, v, *gates)]
    grad_out = torch.randn(shape, generator=gen)

    def step() -> None:
        for t in leaves:
            t.grad = None
        lr, momentum, forget = (torch.sigmoid(g) for g in leaves[3:])
        out, _ = memorize(q, k, v, lr, momentum=momentum, forget=forget, rule="titans", chunk_size=chunk)
        out.backward(grad_out)

    return step


def memory_layer_dims(heads: int, dim_head: int) -> list[tuple[int, int]]:
    """(in, out) of each linear map of the titans preset's memory, from its initial weights."""
    from ttmem.memory import get_rule

    return [(w.shape[-1], w.shape[-2]) for w in get_rule("titans").initial_weights(heads, dim_head, dim_head)]


def chunked_memory_flops(dims: list[tuple[int, int]], batch: int, heads: int, seq: int, chunk: int,
                         momentum: bool = True) -> dict:
    """Matmul FLOPs the chunked engine needs for one forward + backward (analytic).

    Per chunk of c tokens and per (batch, head), each layer (in -> out) costs
      keys forward at the chunk-start weights  2 c in out
      backward for the output gradients g      2 c in out   (layers after the first; no weight grads)
      dual-form reads   W_ref z (+ S_ref z)    2 c in out (x2 with momentum)
                        Z X^T and (A o Z X^T) G  2 c^2 in + 2 c^2 out
      chunk-end state   W_c (+ S_c)            2 c in out (x2 with momentum)
    The backward of a matmul costs twice its forward, so forward + backward = 3 x forward.
    """
    state_terms = 2 if momentum else 1
    forward = 0
    for start in range(0, seq, chunk):
        c = min(chunk, seq - start)
        for index, (d_in, d_out) in enumerate(dims):
            mn = 2 * c * d_in * d_out
            forward += mn * (1 + (index > 0) + 2 * state_terms) + 2 * c * c * (d_in + d_out)
    forward *= batch * heads
    return {"forward": forward, "forward_backward": 3 * forward}


# ----------------------------------------------------------------------------- worker entry
def worker_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one configuration, one implementation")
    parser.add_argument("--mode", choices=("time", "memory", "matmul", "calibrate"), required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=CHUNK)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--result", type=Path, required=True)
    return parser.parse_args(argv)


def run_worker(args: argparse.Namespace, build: Callable[[int, int, int], tuple], extra: bool) -> None:
    """Measure one configuration and write a JSON object to ``args.result``.

    ``build(dim, heads, chunk) -> (module, forward)``; ``extra`` adds the ttmem-only measurements
    (``memorize`` alone and FLOP counts of it).
    """
    torch.manual_seed(0)
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.mode == "matmul":
        result.update(matmul_throughput())
    elif args.mode == "calibrate":
        result["known_mib"] = 256.0
        result.update(peak_rss_increase(lambda: torch.empty(64 * 2**20).fill_(1.0)))
    else:
        module, forward = build(DIM, args.heads, CHUNK)
        step = layer_step(forward, module, args.batch, args.seq, DIM)
        result["parameters"] = sum(p.numel() for p in module.parameters())
        if args.mode == "memory":
            step()
            result.update(peak_rss_increase(step))
            result["torch_alloc_peak_mib"] = torch_allocation_peak_mib(step)
        else:
            result["layer"] = time_steps(step, args.warmup, args.repeats)
            result["layer_flops"], result["layer_flops_by_op"] = count_matmul_flops(step)
            if extra:
                dim_head = DIM // args.heads
                mem_step = memorize_step(args.batch, args.seq, args.heads, dim_head, CHUNK)
                result["memorize"] = time_steps(mem_step, args.warmup, args.repeats)
                result["memorize_flops"], result["memorize_flops_by_op"] = count_matmul_flops(mem_step)
                result["memory_dims"] = memory_layer_dims(args.heads, dim_head)
    args.result.write_text(json.dumps(result))


# ----------------------------------------------------------------------------- orchestration
def run_in_subprocess(python: Path | str, script: Path, options: list[str], env_extra: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = {key: val for key, val in os.environ.items() if not key.startswith("MALLOC_")}
        env.update(env_extra)
        command = [str(python), str(script), *options, "--result", str(result)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        return json.loads(result.read_text())


def measure_configuration(impl: str, python: Path | str, batch: int, seq: int, heads: int,
                          warmup: int, repeats: int) -> dict:
    """Time it in one fresh interpreter, measure its peak memory in another."""
    if impl == "titans_pytorch":
        script, env, head = PEER_WORKER, {}, []
    else:
        script, env, head = Path(__file__), {"PYTHONPATH": str(ROOT / "src")}, ["--worker"]
    common = [*head, "--batch", str(batch), "--seq", str(seq), "--heads", str(heads)]
    timing = run_in_subprocess(python, script, [*common, "--mode", "time", "--warmup", str(warmup),
                                                "--repeats", str(repeats)], env)
    memory = run_in_subprocess(python, script, [*common, "--mode", "memory"], {**env, **MEMORY_ENV})
    return {**timing, "memory": memory}


def summarise(entry: dict, peak_gflops: float) -> None:
    """Add ratios, target checks and the fraction of matmul peak reached (in place)."""
    ours, peer = entry.get("ttmem"), entry.get("titans_pytorch")
    if ours:
        flops = chunked_memory_flops([tuple(d) for d in ours["memory_dims"]], entry["batch"], entry["heads"],
                                     entry["seq"], CHUNK)
        seconds = ours["memorize"]["median_ms"] * 1e-3
        entry["memory_update"] = {
            "analytic_flops_forward_backward": flops["forward_backward"],
            "counted_flops_forward_backward": ours["memorize_flops"],
            "counted_over_analytic": ours["memorize_flops"] / flops["forward_backward"],
            "gflops": flops["forward_backward"] / seconds / 1e9,
            "fraction_of_matmul_peak": flops["forward_backward"] / seconds / 1e9 / peak_gflops,
        }
    if ours and peer:
        speedup = peer["layer"]["median_ms"] / ours["layer"]["median_ms"]
        fraction = ours["memory"]["peak_increase_mib"] / peer["memory"]["peak_increase_mib"]
        entry["speedup"], entry["memory_fraction"] = speedup, fraction
        entry["meets_speed_target"] = speedup >= TARGET_SPEEDUP
        entry["meets_memory_target"] = fraction <= TARGET_MEMORY_FRACTION


def format_table(entries: list[dict]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (f"{'input':>14} {'heads':>5} {'ttmem ms':>9} {'titans ms':>10} {'speedup':>8} "
              f"{'ttmem MiB':>10} {'titans MiB':>11} {'mem ratio':>9} {'mem GFLOP/s':>11} {'of peak':>7}")
    lines = [header, "-" * len(header)]
    for e in entries:
        ours, peer, upd = e.get("ttmem"), e.get("titans_pytorch"), e.get("memory_update", {})
        ms = [num(r and r["layer"]["median_ms"], ".1f") for r in (ours, peer)]
        mib = [num(r and r["memory"]["peak_increase_mib"], ".1f") for r in (ours, peer)]
        lines.append(
            f"{str((e['batch'], e['seq'], DIM)):>14} {e['heads']:>5} {ms[0]:>9} {ms[1]:>10} "
            f"{num(e.get('speedup'), '.2f') + 'x':>8} {mib[0]:>10} {mib[1]:>11} "
            f"{num(e.get('memory_fraction'), '.3f'):>9} {num(upd.get('gflops'), '.1f'):>11} "
            f"{num(upd.get('fraction_of_matmul_peak'), '.1%'):>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = ROOT / "benchmarks" / "results" / f"{Path(__file__).stem}.json"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impls", default="titans_pytorch,ttmem", help="comma-separated subset to run")
    parser.add_argument("--peer-python", type=Path, default=None,
                        help="python of a titans-pytorch environment (default: .venv-titans)")
    parser.add_argument("--no-setup", action="store_true", help="print the setup commands, do not run them")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    impls = [name for name in args.impls.split(",") if name]
    if set(impls) - {"titans_pytorch", "ttmem"}:
        parser.error("--impls takes titans_pytorch and/or ttmem")

    peer_python = args.peer_python
    if "titans_pytorch" in impls and peer_python is None:
        if args.no_setup and not peer_is_ready(PEER_VENV / "bin" / "python"):
            print("The titans-pytorch environment is missing; create it with:")
            for command in peer_setup_commands():
                print("  " + " ".join(command))
            sys.exit(2)
        peer_python = ensure_peer_env()

    me = Path(__file__)
    matmul_start = run_in_subprocess(sys.executable, me, ["--worker", "--mode", "matmul"], {})
    calibration = run_in_subprocess(sys.executable, me, ["--worker", "--mode", "calibrate"], MEMORY_ENV)
    load_start = os.getloadavg()
    entries = []
    for batch, seq in SHAPES:
        for heads in HEADS:
            entry: dict = {"batch": batch, "seq": seq, "dim": DIM, "heads": heads, "chunk": CHUNK}
            for impl in impls:
                python = peer_python if impl == "titans_pytorch" else sys.executable
                entry[impl] = measure_configuration(impl, python, batch, seq, heads,
                                                    args.warmup, args.repeats)
                print(f"measured {impl} {(batch, seq, DIM)} heads={heads}", file=sys.stderr, flush=True)
            entries.append(entry)
    matmul_end = run_in_subprocess(sys.executable, me, ["--worker", "--mode", "matmul"], {})
    peak = max(matmul_start["best_gflops"], matmul_end["best_gflops"])
    for entry in entries:
        summarise(entry, peak)

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "loadavg_start": load_start,
                    "loadavg_end": os.getloadavg()},
        "matmul_fp32": {"start": matmul_start, "end": matmul_end, "peak_gflops": peak},
        "peak_memory_method": {"description": "peak RSS increase over one step, fresh subprocess, "
                               "glibc mmap threshold 64 KiB", "env": MEMORY_ENV, "calibration": calibration},
        "timing": {"warmup": args.warmup, "repeats": args.repeats, "statistic": "median"},
        "targets": {"speedup_at_least": TARGET_SPEEDUP, "memory_fraction_at_most": TARGET_MEMORY_FRACTION},
        "titans_pytorch_config": TITANS_CONFIG_NOTE,
        "semantic_differences": SEMANTIC_DIFFERENCES,
        "configs": entries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s; calibration: {calibration['peak_increase_mib']:.1f} MiB "
          f"measured for a known {calibration['known_mib']:.0f} MiB")
    print(format_table(entries))
    print(f"targets: speedup >= {TARGET_SPEEDUP}x, memory ratio <= {TARGET_MEMORY_FRACTION}")
    print(f"JSON: {args.out}")


TITANS_CONFIG_NOTE = (
    "titans_pytorch.NeuralMemory(dim=384, chunk_size=64, heads=H, dim_head=384 // H, momentum=True, "
    "momentum_order=1, default_model_kwargs={'depth': 2, 'expansion_factor': 4.0}, "
    "per_head_learned_parameters=True, qk_rmsnorm=True, post_rmsnorm=True, activation=SiLU, "
    "default_step_transform_max_lr=1.0); learned per-token step size, per-chunk momentum and decay"
)

if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        run_worker(worker_arguments(sys.argv[2:]), build_ttmem, extra=True)
    else:
        main()
