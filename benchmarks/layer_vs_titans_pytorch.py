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


def count_matmul_flops(step: Callable[[], None]) -> tuple[int, dict]:
    """FLOPs that ``FlopCounterMode`` attributes to one ``step()``: total and per operator."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def profile_table(step: Callable[[], None], warmup: int, rows: int = 40) -> str:
    """torch.profiler table of one ``step()`` after ``warmup`` runs: operators by self CPU time and shapes."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    averages = prof.key_averages(group_by_input_shape=True)
    return averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36,
                          max_shapes_column_width=60)


def matmul_throughput(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> dict:
    """fp32 ``a @ b`` throughput in GFLOP/s per square size (2 n^3 FLOPs per product)."""
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        out[str(n)] = 2 * n**3 / statistics.median(times) / 1e9
    return {"gflops_by_size": out, "best_gflops": max(out.values())}


def layer_step(forward: Callable[[torch.Tensor], torch.Tensor], module: torch.nn.Module,
               batch: int, seq: int, dim: int, device: str = "cpu") -> Callable[[], None]:
    """One forward + backward of ``forward`` on a fixed [batch, seq, dim] input that requires grad."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, seq, dim, generator=gen).to(device).requires_grad_(True)
    grad_y = torch.randn(batch, seq, dim, generator=gen).to(device)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        forward(x).backward(grad_y)

    return step


# ----------------------------------------------------------------------------- ttmem side
def build_ttmem(dim: int, heads: int, chunk: int, recompute: bool = False) -> tuple[torch.nn.Module, Callable]:
    from ttmem.layers import NeuralMemory

    layer = NeuralMemory(dim, heads=heads, chunk_size=chunk, rule="titans", recompute=recompute)
    return layer, lambda x: layer(x)[0]


def memorize_step(batch: int, seq: int, heads: int, dim_head: int, chunk: int,
                  recompute: bool = False) -> Callable[[], None]:
    """Forward + backward of ``ttmem.memory.memorize`` alone (titans rule) at the layer's shapes."""
    from ttmem.memory import get_rule, initial_state, memorize

    gen = torch.Generator().manual_seed(2)
    # Learned initial weights, as in the layer, so their gradient is part of the work.
    weights = [w.requires_grad_(True) for w in get_rule("titans").initial_weights(heads, dim_head, dim_head)]
    shape = (batch, seq, heads, dim_head)
    q, k = (torch.nn.functional.normalize(torch.randn(shape, generator=gen), dim=-1) for _ in range(2))
    v = torch.randn(shape, generator=gen)
    gates = [torch.randn(batch, seq, heads, generator=gen) for _ in range(3)]
    leaves = [t.requires_grad_(True) for t in (q, k, v, *gates)] + weights
    grad_out = torch.randn(shape, generator=gen)

    def step() -> None:
        for t in leaves:
            t.grad = None
        lr, momentum, forget = (torch.sigmoid(g) for g in gates)
        state = initial_state("titans", batch, heads, dim_head, dim_head, weights=tuple(weights))
        out, _ = memorize(q, k, v, lr, momentum=momentum, forget=forget, rule="titans", chunk_size=chunk,
                          state=state, recompute=recompute)
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
    and the chunk's coefficient matrices (forgetting x momentum decay) 2 c^3 + 2 c^2 with momentum.
    The backward of a matmul costs twice its forward, so forward + backward = 3 x forward.
    """
    state_terms = 2 if momentum else 1
    forward = 0
    for start in range(0, seq, chunk):
        c = min(chunk, seq - start)
        for index, (d_in, d_out) in enumerate(dims):
            mn = 2 * c * d_in * d_out
            forward += mn * (1 + (index > 0) + 2 * state_terms) + 2 * c * c * (d_in + d_out)
        if momentum:
            forward += 2 * c**3 + 2 * c**2
    forward *= batch * heads
    return {"forward": forward, "forward_backward": 3 * forward}


# ----------------------------------------------------------------------------- workers
def worker_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one configuration of one implementation")
    parser.add_argument("--mode", choices=("serve", "memory", "profile", "matmul", "calibrate"), required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=CHUNK)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--recompute", action="store_true", help="ttmem: recompute=True (checkpointed chunk segments)")
    return parser.parse_args(argv)


def run_worker(args: argparse.Namespace, build: Callable[[int, int, int], tuple], extra: bool) -> None:
    """Measure one configuration; write a JSON object to ``args.result``.

    ``build(dim, heads, chunk) -> (module, forward)``. ``extra`` adds ``memorize`` alone (ttmem only).
    In ``serve`` mode the worker warms up, prints ``@@ready`` and then answers commands on stdin, one
    per line: a step name times one run of it (answer ``@@<ms>``), ``flops`` counts every step's
    FLOPs, ``done`` writes the result and exits. The parent alternates two such workers run by run,
    so both see the same background load.
    """
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.mode == "matmul":
        result.update(matmul_throughput())
    elif args.mode == "calibrate":
        result["known_mib"] = 256.0
        result.update(peak_rss_increase(lambda: torch.empty(64 * 2**20).fill_(1.0)))
    else:
        module, forward = build(DIM, args.heads, CHUNK, **({"recompute": True} if args.recompute else {}))
        result["parameters"] = sum(p.numel() for p in module.parameters())
        steps = {"layer": layer_step(forward, module, args.batch, args.seq, DIM)}
        if args.mode == "profile":
            result["profile"] = profile_table(steps["layer"], args.warmup)
        elif args.mode == "memory":
            steps["layer"]()
            result.update(peak_rss_increase(steps["layer"]))
            result["torch_alloc_peak_mib"] = torch_allocation_peak_mib(steps["layer"])
        else:
            if extra:
                dim_head = DIM // args.heads
                steps["memorize"] = memorize_step(args.batch, args.seq, args.heads, dim_head, CHUNK, args.recompute)
                result["memory_dims"] = memory_layer_dims(args.heads, dim_head)
            for step in steps.values():
                for _ in range(args.warmup):
                    step()
            print("@@ready", flush=True)
            for line in sys.stdin:
                command = line.strip()
                if command in steps:
                    start = time.perf_counter()
                    steps[command]()
                    print(f"@@{(time.perf_counter() - start) * 1e3}", flush=True)
                elif command == "flops":
                    for name, step in steps.items():
                        result[f"{name}_flops"], result[f"{name}_flops_by_op"] = count_matmul_flops(step)
                    print("@@ok", flush=True)
                elif command == "done":
                    break
                else:
                    raise ValueError(f"unknown worker command {command!r}")
    args.result.write_text(json.dumps(result))


# ----------------------------------------------------------------------------- orchestration
def thread_env(threads: int) -> dict:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def clean_env(extra: dict) -> dict:
    env = {key: val for key, val in os.environ.items() if not key.startswith("MALLOC_")}
    env.update(extra)
    return env


def run_in_subprocess(python: Path | str, script: Path, options: list[str], env_extra: dict) -> dict:
    """Run a worker to completion in a fresh interpreter and return its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [str(python), str(script), *options, "--result", str(result)]
        done = subprocess.run(command, env=clean_env(env_extra), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        return json.loads(result.read_text())


class Worker:
    """A ``serve``-mode worker process answering one command at a time."""

    def __init__(self, python: Path | str, script: Path, options: list[str], env_extra: dict):
        self.tmp = tempfile.TemporaryDirectory()
        self.result, self.log = Path(self.tmp.name) / "result.json", Path(self.tmp.name) / "stderr.txt"
        self.command = [str(python), str(script), *options, "--mode", "serve", "--result", str(self.result)]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.command, env=clean_env(env_extra), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True)
        self._answer()

    def _answer(self) -> str:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return line[2:].strip()
        self.proc.wait()
        raise RuntimeError(f"{' '.join(self.command)} failed:\n{self.log.read_text()[-4000:]}")

    def ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def finish(self) -> dict:
        self.proc.stdin.write("done\n")
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise RuntimeError(f"{' '.join(self.command)} failed:\n{self.log.read_text()[-4000:]}")
        result = json.loads(self.result.read_text())
        self.tmp.cleanup()
        return result


def worker_launch(impl: str, batch: int, seq: int, heads: int, threads: int,
                  recompute: bool = False) -> tuple[Path, list[str], dict]:
    options = ["--batch", str(batch), "--seq", str(seq), "--heads", str(heads), "--threads", str(threads)]
    if impl == "titans_pytorch":
        return PEER_WORKER, options, thread_env(threads)
    options += ["--recompute"] if recompute else []
    return Path(__file__), ["--worker", *options], {"PYTHONPATH": str(ROOT / "src"), **thread_env(threads)}


def measure_configuration(pythons: dict, batch: int, seq: int, heads: int, warmup: int, repeats: int,
                          threads: int, recompute: bool = False, memory_only: bool = False) -> dict:
    """Paired timing (implementations alternate run by run, ABBA order), then peak memory of each in a
    fresh interpreter of its own. ``memory_only`` skips the timing."""
    results: dict = {impl: {} for impl in pythons}
    if not memory_only:
        results = time_configuration(pythons, batch, seq, heads, warmup, repeats, threads, recompute)
    for impl, python in pythons.items():
        script, options, env = worker_launch(impl, batch, seq, heads, threads, recompute)
        results[impl]["memory"] = run_in_subprocess(python, script, [*options, "--mode", "memory"],
                                                    {**env, **MEMORY_ENV})
    return results


def time_configuration(pythons: dict, batch: int, seq: int, heads: int, warmup: int, repeats: int,
                       threads: int, recompute: bool) -> dict:
    """Both implementations warmed up in worker processes that alternate run by run (ABBA order)."""
    workers = {}
    for impl, python in pythons.items():
        script, options, env = worker_launch(impl, batch, seq, heads, threads, recompute)
        workers[impl] = Worker(python, script, [*options, "--warmup", str(warmup)], env)
    times: dict = {impl: [] for impl in workers}
    order = list(workers)
    for run in range(repeats):
        for impl in order if run % 2 == 0 else order[::-1]:
            times[impl].append(float(workers[impl].ask("layer")))
    memorize_times = [float(workers["ttmem"].ask("memorize")) for _ in range(repeats)] if "ttmem" in workers else []
    results = {}
    for impl, worker in workers.items():
        worker.ask("flops")
        results[impl] = worker.finish()
        results[impl]["layer"] = summary(times[impl])
        if impl == "ttmem":
            results[impl]["memorize"] = summary(memorize_times)
    if len(order) == 2:
        results["paired_speedups"] = [p / o for p, o in zip(times["titans_pytorch"], times["ttmem"])]
    return results


def summary(times_ms: list[float]) -> dict:
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "times_ms": times_ms}


def summarise(entry: dict, peak_gflops: float) -> None:
    """Add ratios, target checks and the fraction of matmul peak reached (in place)."""
    ours, peer = entry.get("ttmem"), entry.get("titans_pytorch")
    if ours and peer:
        fraction = ours["memory"]["peak_increase_mib"] / peer["memory"]["peak_increase_mib"]
        entry["memory_fraction"] = fraction
        entry["meets_memory_target"] = fraction <= TARGET_MEMORY_FRACTION
    if ours and "memorize" in ours:
        flops = chunked_memory_flops([tuple(d) for d in ours["memory_dims"]], entry["batch"], entry["heads"],
                                     entry["seq"], CHUNK)["forward_backward"]
        gflops = flops / (ours["memorize"]["median_ms"] * 1e-3) / 1e9
        entry["memory_update"] = {
            "analytic_flops_forward_backward": flops,
            "counted_flops_forward_backward": ours["memorize_flops"],
            "counted_over_analytic": ours["memorize_flops"] / flops,
            "gflops": gflops,
            "fraction_of_matmul_peak": gflops / peak_gflops,
        }
    if ours and peer and "layer" in ours:
        speedup = peer["layer"]["median_ms"] / ours["layer"]["median_ms"]
        entry["speedup"] = speedup
        entry["median_paired_speedup"] = statistics.median(entry.pop("paired_speedups_list"))
        entry["meets_speed_target"] = speedup >= TARGET_SPEEDUP


def format_table(entries: list[dict]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (f"{'input':>14} {'heads':>5} {'ttmem ms':>9} {'titans ms':>10} {'speedup':>8} "
              f"{'ttmem MiB':>10} {'titans MiB':>11} {'mem ratio':>9} {'mem GFLOP/s':>11} {'of peak':>7}")
    lines = [header, "-" * len(header)]
    for e in entries:
        ours, peer, upd = e.get("ttmem"), e.get("titans_pytorch"), e.get("memory_update", {})
        ms = [num(r and "layer" in r and r["layer"]["median_ms"] or None, ".1f") for r in (ours, peer)]
        mib = [num(r and r["memory"]["peak_increase_mib"], ".1f") for r in (ours, peer)]
        speedup = num(e.get("speedup"), ".2f") + ("x" if "speedup" in e else "")
        lines.append(
            f"{str((e['batch'], e['seq'], DIM)):>14} {e['heads']:>5} {ms[0]:>9} {ms[1]:>10} {speedup:>8} "
            f"{mib[0]:>10} {mib[1]:>11} {num(e.get('memory_fraction'), '.3f'):>9} "
            f"{num(upd.get('gflops'), '.1f'):>11} {num(upd.get('fraction_of_matmul_peak'), '.1%'):>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = ROOT / "benchmarks" / "results" / f"{Path(__file__).stem}.json"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads in every worker (default: all cores of this process)")
    parser.add_argument("--impls", default="titans_pytorch,ttmem", help="comma-separated subset to run")
    parser.add_argument("--peer-python", type=Path, default=None,
                        help="python of a titans-pytorch environment (default: .venv-titans)")
    parser.add_argument("--no-setup", action="store_true", help="print the setup commands, do not run them")
    parser.add_argument("--recompute", action="store_true",
                        help="ttmem with NeuralMemory(recompute=True): chunk segments rebuilt in the backward")
    parser.add_argument("--memory-only", action="store_true", help="peak memory only, no timing")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    if args.warmup < 1 or args.threads < 1:
        parser.error("--warmup and --threads must be at least 1")
    impls = [name for name in args.impls.split(",") if name]
    if not impls or set(impls) - {"titans_pytorch", "ttmem"}:
        parser.error("--impls takes titans_pytorch and/or ttmem")

    pythons: dict = {}
    if "titans_pytorch" in impls:
        pythons["titans_pytorch"] = args.peer_python
        if args.peer_python is None:
            if args.no_setup and not peer_is_ready(PEER_VENV / "bin" / "python"):
                print("The titans-pytorch environment is missing; create it with:")
                for command in peer_setup_commands():
                    print("  " + " ".join(command))
                sys.exit(2)
            pythons["titans_pytorch"] = ensure_peer_env()
    if "ttmem" in impls:
        pythons["ttmem"] = sys.executable

    me, threads = Path(__file__), thread_env(args.threads)
    matmul = ["--worker", "--mode", "matmul", "--threads", str(args.threads)]
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * args.threads and args.threads > 1:
        print(f"warning: load average {load_start[0]:.1f} on {os.cpu_count()} cores; timings will be noisy "
              "(try --threads 1 on a shared machine)", file=sys.stderr)
    no_matmul = {"best_gflops": float("nan")}
    matmul_start = no_matmul if args.memory_only else run_in_subprocess(sys.executable, me, matmul, threads)
    calibration = run_in_subprocess(sys.executable, me, ["--worker", "--mode", "calibrate"], MEMORY_ENV)
    entries = []
    for batch, seq in SHAPES:
        for heads in HEADS:
            entry: dict = {"batch": batch, "seq": seq, "dim": DIM, "heads": heads, "chunk": CHUNK}
            results = measure_configuration(pythons, batch, seq, heads, args.warmup, args.repeats, args.threads,
                                            args.recompute, args.memory_only)
            if "paired_speedups" in results:
                entry["paired_speedups_list"] = results.pop("paired_speedups")
            entry.update(results)
            print(f"measured {(batch, seq, DIM)} heads={heads}", file=sys.stderr, flush=True)
            entries.append(entry)
    matmul_end = no_matmul if args.memory_only else run_in_subprocess(sys.executable, me, matmul, threads)
    peak = max(matmul_start["best_gflops"], matmul_end["best_gflops"])
    for entry in entries:
        summarise(entry, peak)
    mode = "recompute" if args.recompute else "stored"

    from _titans_pytorch_worker import SEMANTIC_DIFFERENCES, TITANS_PYTORCH_CONFIG

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "matmul_fp32": {"start": matmul_start, "end": matmul_end, "peak_gflops": peak},
        "peak_memory_method": {"description": "peak RSS increase over one step, fresh subprocess, "
                               "glibc mmap threshold 64 KiB", "env": MEMORY_ENV, "calibration": calibration},
        "timing": {"warmup": args.warmup, "repeats": args.repeats, "statistic": "median",
                   "pairing": "implementations alternate run by run (ABBA)"},
        "targets": {"speedup_at_least": TARGET_SPEEDUP, "memory_fraction_at_most": TARGET_MEMORY_FRACTION},
        "titans_pytorch_config": TITANS_PYTORCH_CONFIG,
        "semantic_differences": SEMANTIC_DIFFERENCES,
        "ttmem_backward": mode,
        "configs": entries,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s at {args.threads} thread(s); peak-memory calibration: "
          f"{calibration['peak_increase_mib']:.1f} MiB measured for a known {calibration['known_mib']:.0f} MiB")
    print(f"ttmem backward: {mode} intermediates" + (" (peak memory only)" if args.memory_only else ""))
    print(format_table(entries))
    print(f"targets: speedup >= {TARGET_SPEEDUP}x, memory ratio <= {TARGET_MEMORY_FRACTION}; "
          f"load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        run_worker(worker_arguments(sys.argv[2:]), build_ttmem, extra=True)
    else:
        main()
