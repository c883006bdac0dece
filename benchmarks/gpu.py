"""GPU benchmark: ttmem against its peers and a Transformer, in one command that writes JSON and a Markdown table.

    PYTHONPATH=src python benchmarks/gpu.py                       # on a GPU: the full plan, at most 8 minutes
    PYTHONPATH=src python benchmarks/gpu.py --device cpu --quick  # small shapes, well under a minute on 2 cores

Sections (one table row per implementation and case):

* ``layer``: ttmem's ``NeuralMemory`` against titans-pytorch's ``NeuralMemory``, forward + backward, at the
  layer benchmark's shapes (2, 1024, 384) and (1, 4096, 384), one and four heads, chunk 64. Both layers are built
  by ``layer_vs_titans_pytorch.py`` / ``_titans_pytorch_worker.py`` (same configuration match, same step).
* ``mac``: one AdamW training step of ttmem's Titans MAC model (``mac-tiny`` preset) against titans-pytorch's
  ``MemoryAsContextTransformer`` of the same width, depth, heads, segment length, persistent tokens and memory
  chunk, with its feed-forward width solved so that both hold the same number of parameters (within 1%);
  residual hyper-connections off (ttmem has a plain residual), one long-term memory token per 8 segment tokens
  (the ratio of titans-pytorch's README), the memory configured as in the layer section.
* ``delta``: ``ttmem.memory.memorize`` with the ``delta`` and ``gated_delta`` rules against flash-linear-attention's
  ``chunk_delta_rule`` / ``chunk_gated_delta_rule`` (forward + backward, scale 1, β = θ, g = log(1 − α),
  l2-normalised keys, chunk 64). The delta rule is the same recurrence in both; for the gated rule ttmem takes the
  error at W_{t−1} and fla at α_t W_{t−1}, the same work. ttmem runs in float32 (its delta path solves triangular
  systems, for which torch has no bfloat16 kernel); fla in float32 and in bfloat16, its usual dtype (its
  ``chunk_delta_rule`` refuses float32: that row reports its error). fla's Triton kernels need a CUDA device.
* ``train``: training tokens/s of ``transformer-tiny`` and ``transformer-340m`` (attention through SDPA).
* ``decode``: milliseconds per decoded token after a context of 1K..64K tokens for a few models, measured by
  ``models.py``'s ``decode_latency`` (full-attention caches beyond 16K are filled synthetically, see there).

Timing: ``warmup`` runs, then the median of ``repeats`` runs; on CUDA each run is timed with CUDA events and
synchronised, on CPU with ``time.perf_counter``. Peak MiB is the tensor memory one more run needs above what was
allocated before it (CUDA: ``torch.cuda.max_memory_allocated``; CPU: torch's own allocation events from the
profiler), so weights and optimiser state are not included. A peer that does not import, or cannot run on the
device, is a row with the reason; an error in any row is recorded as that row, and the command exits with
status 1 after writing everything when a ttmem row failed (a peer's failure is reported, not fatal). A time
budget (``--budget-s``) turns the rows that would start after it into skipped rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _titans_pytorch_worker import build_titans_pytorch, titans_pytorch_memory_kwargs  # noqa: E402
from layer_vs_titans_pytorch import build_ttmem, layer_step, torch_allocation_peak_mib  # noqa: E402
from models import decode_latency, training_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("layer", "mac", "delta", "train", "decode")
COLUMNS = ("section", "case", "implementation", "median ms", "tokens/s", "peak MiB", "note")


@dataclass(frozen=True)
class Plan:
    """Every size the benchmark runs; ``full_plan`` for a GPU, ``quick_plan`` for a CPU."""

    layer_dim: int = 384
    layer_chunk: int = 64
    layer_shapes: tuple[tuple[int, int], ...] = ((2, 1024), (1, 4096))
    layer_heads: tuple[int, ...] = (1, 4)
    mac_preset: str = "mac-tiny"
    mac_batch: int = 8
    mac_seq: int = 1024
    delta_shape: tuple[int, int, int, int] = (4, 4096, 8, 128)  # batch, time, heads, dim
    delta_chunk: int = 64
    # (preset, ModelConfig overrides as (field, value) pairs, batch, seq)
    train_models: tuple[tuple[str, tuple, int, int], ...] = (
        ("transformer-tiny", (), 16, 1024), ("transformer-340m", (), 4, 2048))
    decode_models: tuple[str, ...] = ("transformer-tiny", "swa_transformer-tiny", "gated_deltanet-tiny",
                                      "theta_lm-tiny", "mac-tiny")
    decode_contexts: tuple[int, ...] = (1024, 4096, 16384, 65536)
    decode_tokens: int = 16
    decode_piece: int = 2048
    decode_max_real_attention: int = 16384
    warmup: int = 2
    repeats: int = 5


def full_plan() -> Plan:
    return Plan()


def quick_plan() -> Plan:
    return Plan(layer_dim=64, layer_chunk=16, layer_shapes=((1, 128), (1, 256)), layer_heads=(1, 4),
                mac_batch=2, mac_seq=64, delta_shape=(1, 256, 2, 32), delta_chunk=16,
                train_models=(("transformer-tiny", (), 2, 128), ("transformer-340m", (("depth", 1),), 1, 64)),
                decode_models=("swa_transformer-tiny", "gated_deltanet-tiny", "mac-tiny"),
                decode_contexts=(128, 512), decode_tokens=4, decode_piece=512, decode_max_real_attention=256,
                warmup=1, repeats=3)


# ----------------------------------------------------------------------------- measurement
def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_step_mib(step: Callable[[], None], device: str) -> float:
    """Tensor memory one ``step()`` needs above what is allocated before it."""
    if device != "cuda":
        return torch_allocation_peak_mib(step)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    synchronize(device)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def time_step(step: Callable[[], None], device: str, warmup: int, repeats: int) -> dict:
    """Median / min of ``repeats`` timed runs after ``warmup`` runs, then the peak memory of one more run."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            step()
            times.append((time.perf_counter() - begin) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times,
            "peak_mib": peak_step_mib(step, device)}


@functools.cache
def import_peer(module: str, package: str) -> tuple[object | None, str]:
    """The peer's module, or None and a one-line reason (tried once per process: a failed import can leave
    half-imported submodules behind that make a second try succeed with a broken package)."""
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # a broken install raises more than ImportError
        return None, f"{package} not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def spent(self) -> bool:
        return time.perf_counter() - self.start > self.seconds


@dataclass
class Runner:
    """Runs rows in order, turning exceptions and the spent budget into rows that say why."""

    device: str
    plan: Plan
    budget: Budget
    log: Callable[[str], None] = print
    rows: list[dict] = field(default_factory=list)
    on_row: Callable[[dict], None] = lambda row: None

    def row(self, section: str, case: str, impl: str, measure: Callable[[], dict] | None, reason: str = "",
            baseline: dict | None = None) -> dict:
        """One row; with ``baseline`` (ttmem's row of the same case) it also gets ``peer_over_ttmem``: its median
        time over ttmem's (above 1: ttmem is faster)."""
        entry = {"section": section, "case": case, "implementation": impl}
        if measure is None:
            entry.update(status="skipped", reason=reason)
        elif self.budget.spent():
            entry.update(status="skipped", reason=f"time budget of {self.budget.seconds:.0f} s spent")
        else:
            try:
                torch.manual_seed(0)
                entry.update(status="ok", **measure())
            except Exception as exc:
                entry.update(status="error", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            finally:
                if self.device == "cuda":
                    torch.cuda.empty_cache()
        if baseline is not None and baseline["status"] == entry["status"] == "ok":
            entry["peer_over_ttmem"] = entry["median_ms"] / baseline["median_ms"]
        self.rows.append(entry)
        self.log(format_row(entry))
        self.on_row(entry)
        return entry

    def timed(self, step_factory: Callable[[], tuple[Callable[[], None], dict]], tokens: int = 0) -> Callable:
        """A measure function: build the step (inside the row, so build errors are caught), then time it."""
        def measure() -> dict:
            step, extra = step_factory()
            result = {**extra, **time_step(step, self.device, self.plan.warmup, self.plan.repeats)}
            if tokens:
                result["tokens_per_s"] = tokens / (result["median_ms"] * 1e-3)
            return result
        return measure


# ----------------------------------------------------------------------------- sections
def layer_section(run: Runner) -> None:
    plan, device = run.plan, run.device
    peer, reason = import_peer("titans_pytorch", "titans-pytorch")

    def factory(build: Callable, batch: int, seq: int, heads: int) -> Callable:
        def make() -> tuple[Callable[[], None], dict]:
            module, forward = build(plan.layer_dim, heads, plan.layer_chunk)
            module.to(device)
            params = sum(p.numel() for p in module.parameters())
            return layer_step(forward, module, batch, seq, plan.layer_dim, device), {"parameters": params}
        return make

    for batch, seq in plan.layer_shapes:
        for heads in plan.layer_heads:
            case = f"({batch}, {seq}, {plan.layer_dim}) heads={heads} fwd+bwd"
            tokens = batch * seq
            ours = run.row("layer", case, "ttmem", run.timed(factory(build_ttmem, batch, seq, heads), tokens))
            measure = run.timed(factory(build_titans_pytorch, batch, seq, heads), tokens) if peer else None
            run.row("layer", case, "titans-pytorch", measure, reason, baseline=ours)


def peer_mac_model(config, ff_mult: float) -> torch.nn.Module:
    """titans-pytorch's MAC transformer with ttmem's MAC shape (see the module docstring)."""
    from titans_pytorch import MemoryAsContextTransformer

    model = MemoryAsContextTransformer(
        num_tokens=config.vocab_size, dim=config.dim, depth=config.depth, segment_len=config.segment_len,
        num_persist_mem_tokens=config.persistent_tokens, num_longterm_mem_tokens=max(1, config.segment_len // 8),
        neural_memory_segment_len=config.chunk_size, heads=config.heads, dim_head=config.head_dim,
        ff_mult=ff_mult, num_residual_streams=1,
        neural_memory_kwargs=titans_pytorch_memory_kwargs(config.heads, config.head_dim))
    # Its per-head initial memory weights are expanded views of one tensor (stride 0), which AdamW cannot
    # update in place; give each head its own copy, as ttmem's per-head parameters are.
    for parameter in model.parameters():
        if 0 in parameter.stride():
            parameter.data = parameter.data.clone()
    return model


def matched_ff_mult(config, target: int) -> float:
    """The feed-forward multiplier that gives the peer ``target`` parameters (counts are linear in it)."""
    def count(mult: float) -> int:
        return sum(p.numel() for p in peer_mac_model(config, mult).parameters())

    low, high = count(1.0), count(2.0)
    return max(0.05, 1.0 + (target - low) / (high - low))


def mac_section(run: Runner) -> None:
    from ttmem.models import build_model, count_parameters

    plan, device = run.plan, run.device
    batch, seq = plan.mac_batch, plan.mac_seq
    case = f"{plan.mac_preset} training step, batch {batch} x {seq}"

    def ours() -> tuple[Callable[[], None], dict]:
        model = build_model(plan.mac_preset).to(device)
        return training_step(model, batch, seq, device), {"parameters": count_parameters(model)}

    def theirs() -> tuple[Callable[[], None], dict]:
        reference = build_model(plan.mac_preset)
        ff_mult = matched_ff_mult(reference.config, count_parameters(reference))
        config = reference.config
        model = peer_mac_model(config, ff_mult).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        data = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(data, return_loss=True).backward()
            optimizer.step()

        return step, {"parameters": sum(p.numel() for p in model.parameters()), "ff_mult": ff_mult}

    mine = run.row("mac", case, "ttmem", run.timed(ours, batch * seq))
    peer, reason = import_peer("titans_pytorch", "titans-pytorch")
    measure = run.timed(theirs, batch * seq) if peer else None
    run.row("mac", case, "titans-pytorch", measure, reason, baseline=mine)


def delta_inputs(shape: tuple[int, int, int, int], device: str, dtype: torch.dtype = torch.float32) -> dict:
    """q, k (l2-normalised), v, step size θ in (0, 1) and forget α in (0, 0.1), all requiring grad."""
    gen = torch.Generator().manual_seed(3)
    batch, seq, heads, dim = shape
    rand = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    tensors = {"q": torch.nn.functional.normalize(rand(batch, seq, heads, dim), dim=-1),
               "k": torch.nn.functional.normalize(rand(batch, seq, heads, dim), dim=-1),
               "v": rand(batch, seq, heads, dim), "lr": torch.sigmoid(rand(batch, seq, heads)),
               "forget": 0.1 * torch.sigmoid(rand(batch, seq, heads))}
    return {name: t.to(device, dtype).requires_grad_(True) for name, t in tensors.items()}


def delta_section(run: Runner) -> None:
    plan, device = run.plan, run.device
    from ttmem.memory import memorize

    fla, reason = import_peer("fla.ops", "flash-linear-attention")
    if fla is not None and device != "cuda":
        fla, reason = None, "flash-linear-attention's Triton kernels need a CUDA device"
    tokens = plan.delta_shape[0] * plan.delta_shape[1]
    for rule in ("delta", "gated_delta"):
        case = f"{rule} {plan.delta_shape} (B, T, H, D) fwd+bwd"

        def ours(rule: str = rule) -> tuple[Callable[[], None], dict]:
            x = delta_inputs(plan.delta_shape, device)
            forget = {"forget": x["forget"]} if rule == "gated_delta" else {}
            grad = torch.randn_like(x["v"])

            def step() -> None:
                out, _ = memorize(x["q"], x["k"], x["v"], x["lr"], rule=rule, chunk_size=plan.delta_chunk, **forget)
                out.backward(grad)
            return step, {"dtype": "float32"}

        def theirs(rule: str = rule, dtype: str = "float32") -> tuple[Callable[[], None], dict]:
            x = delta_inputs(plan.delta_shape, device, getattr(torch, dtype))
            grad = torch.randn_like(x["v"])
            if rule == "delta":
                kernel = importlib.import_module("fla.ops.delta_rule").chunk_delta_rule
                call = lambda: kernel(x["q"], x["k"], x["v"], x["lr"], scale=1.0)  # noqa: E731
            else:
                kernel = importlib.import_module("fla.ops.gated_delta_rule").chunk_gated_delta_rule
                call = lambda: kernel(x["q"], x["k"], x["v"], torch.log1p(-x["forget"]), x["lr"],  # noqa: E731
                                      scale=1.0)

            def step() -> None:
                call()[0].backward(grad)
            return step, {"dtype": dtype}

        mine = run.row("delta", case + ", float32", "ttmem", run.timed(ours, tokens))
        for dtype in ("float32", "bfloat16"):
            measure = run.timed(functools.partial(theirs, rule, dtype), tokens) if fla else None
            run.row("delta", f"{case}, {dtype}", "flash-linear-attention", measure, reason, baseline=mine)


def train_section(run: Runner) -> None:
    from ttmem.models import build_model, count_parameters

    for preset, overrides, batch, seq in run.plan.train_models:
        changed = "".join(f", {name}={value}" for name, value in overrides)
        case = f"{preset}{changed} training step, batch {batch} x {seq}"

        def make(preset: str = preset, overrides: tuple = overrides, batch: int = batch, seq: int = seq):
            model = build_model(preset, **dict(overrides)).to(run.device)
            return training_step(model, batch, seq, run.device), {"parameters": count_parameters(model)}

        run.row("train", case, "ttmem (SDPA)", run.timed(make, batch * seq))


def decode_section(run: Runner) -> None:
    plan = run.plan
    for name in plan.decode_models:
        for context in plan.decode_contexts:
            def measure(name: str = name, context: int = context) -> dict:
                result = decode_latency(name, context, plan.decode_tokens, plan.decode_piece,
                                        plan.decode_max_real_attention, run.device)
                return {"median_ms": result.pop("ms_per_token"), **result}
            run.row("decode", f"{name} after {context} tokens, per token", "ttmem", measure)


SECTION_RUNNERS = {"layer": layer_section, "mac": mac_section, "delta": delta_section, "train": train_section,
                   "decode": decode_section}


# ----------------------------------------------------------------------------- report
def format_row(entry: dict) -> str:
    def num(key: str, fmt: str) -> str:
        value = entry.get(key)
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    note = entry.get("reason", "") if entry["status"] != "ok" else ""
    if entry["status"] == "error":
        note = "error: " + note
    if "peer_over_ttmem" in entry:
        note = f"takes {entry['peer_over_ttmem']:.2f}x ttmem's time"
    if entry.get("prefill") == "synthetic":
        note = "synthetic full-attention cache"
    if "parameters" in entry and entry["status"] == "ok":
        note = f"{entry['parameters']:,} params" + (f"; {note}" if note else "")
    cells = (entry["section"], entry["case"], entry["implementation"], num("median_ms", ".2f"),
             num("tokens_per_s", ",.0f"), num("peak_mib", ".1f"), note.replace("|", "/"))
    return "| " + " | ".join(cells) + " |"


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": device,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30)
    return info


def markdown(report: dict) -> str:
    machine = report["machine"]
    where = machine.get("gpu") or f"CPU ({machine['cpu_count']} cores, {machine['threads']} torch threads)"
    lines = [f"ttmem GPU benchmark on {where}, torch {machine['torch']}, "
             f"{'TF32' if machine['tf32_matmul'] else 'fp32'} matmuls; median of {report['plan']['repeats']} runs "
             f"after {report['plan']['warmup']} warm-up runs; {report['elapsed_s']:.0f} s in all"
             + ("." if report["complete"] else " so far (the run did not finish)."), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [format_row(entry) for entry in report["rows"]]
    return "\n".join(lines) + "\n"


def run_benchmark(plan: Plan, device: str, out: Path, sections: tuple[str, ...] = SECTIONS,
                  budget_s: float = 480.0, log: Callable[[str], None] = print) -> dict:
    """Run the sections in order; write ``out`` (JSON) and ``out`` with suffix .md; return the report.

    Both files are rewritten after every row ("complete": false until the last), so a run stopped from
    outside still leaves the rows it measured."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine_info(device), "plan": dataclasses.asdict(plan), "sections": list(sections),
              "budget_s": budget_s, "complete": False, "elapsed_s": 0.0, "rows": [], "errors": 0, "peer_errors": 0}

    def write(_row: dict | None = None) -> None:
        rows = report["rows"]
        report.update(elapsed_s=time.perf_counter() - start,
                      errors=sum(r["status"] == "error" and r["implementation"].startswith("ttmem") for r in rows),
                      peer_errors=sum(r["status"] == "error" and not r["implementation"].startswith("ttmem")
                                      for r in rows))
        out.write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))

    runner = Runner(device, plan, Budget(budget_s), log, rows=report["rows"], on_row=write)
    log("| " + " | ".join(COLUMNS) + " |")
    for name in sections:
        SECTION_RUNNERS[name](runner)
    report["complete"] = True
    write()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes (for a CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="rows that would start later are skipped")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA (default: exact fp32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.json",
                        help="JSON path; the Markdown table goes next to it with suffix .md")
    args = parser.parse_args(argv)
    sections = tuple(name for name in args.sections.split(",") if name)
    unknown = set(sections) - set(SECTIONS)
    if unknown or not sections:
        parser.error(f"--sections takes a comma-separated subset of {', '.join(SECTIONS)}, got {args.sections!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (use --device cpu --quick)")
    if args.budget_s <= 0 or (args.threads is not None and args.threads < 1):
        parser.error("--budget-s must be positive and --threads at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    plan = quick_plan() if args.quick else full_plan()
    report = run_benchmark(plan, args.device, args.out, sections, args.budget_s)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {report['elapsed_s']:.0f} s; "
          f"{report['errors']} ttmem row(s) and {report['peer_errors']} peer row(s) with errors")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
