"""Model benchmark: training throughput and peak memory at equal parameter count, decode latency vs context.

    PYTHONPATH=src python benchmarks/models.py --threads 1 --out benchmarks/results/models.json

Training: every architecture's preset of one size (``--size``, default ``tiny``: about 2.5M parameters
each, see ``ttmem.models.presets``) runs ``--train-steps`` AdamW steps on random bytes of shape
``--batch`` × each of ``--seqs`` after one warm-up step; tokens/s = batch · seq · steps / time. Each model runs
in its own process, so peak memory is that process's peak resident set minus its resident set just
before the first step (on CUDA: ``torch.cuda.max_memory_allocated``). The peer (``--peer``, the Transformer)
runs before the first model and after every model, and each model's ratios are taken against the mean of the
peer runs on either side of it: on a shared machine, load drifts over the minutes a table takes.

Decode: for each context length, the model reads the context (prefill, streamed in pieces of
``--prefill-piece`` tokens) and then decodes ``--decode-tokens`` tokens one at a time under
``torch.inference_mode`` with the memories' momentum updated in place (as ``generate`` runs); the median time
per token is reported. Reading a long context through full attention costs O(L^2) on a CPU, so for
full-attention caches longer than ``--max-real-attention-prefill`` the cache is filled with random keys and
values of the right length instead (marked ``"prefill": "synthetic"``): the cost of one
decode step depends on the cache length, not on its contents. Every other model reads the context.

``--compile-decode``: the decode steps run through ``torch.compile(model, fullgraph=True)`` (inductor), model
and peer alike; the first ``COMPILED_WARMUP`` steps after the prefill (compilation, and the graphs of chunk and
segment boundaries) are not timed. An architecture that fails to compile is reported as such in the table and
the JSON.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ttmem.layers.attention import KVCache
from ttmem.memory import decode_in_place
from ttmem.models import ARCHITECTURES, ModelState, build_model, count_parameters
from ttmem.models.presets import VARIANTS

DEFAULT_CONTEXTS = (1024, 4096, 16384, 65536)
COMPILED_WARMUP = 40  # decode steps: more than a chunk (16) and a MAC segment (32) of the tiny presets
# Compiled decoding makes a graph per structural case of a state (a chunk in progress or complete, a segment's first
# token, a cache still filling): in their first 40 tokens MAC made 8, torch's default limit per function, the other
# memory presets 4, swa_transformer 2; model and peer share functions, so their graphs count together.
COMPILED_RECOMPILE_LIMIT = 64


def _warmup_steps(compiled: bool) -> int:
    """Untimed decode steps after the prefill: compilation and boundary graphs, or two (a cache may grow). Compiled,
    the compiler starts empty with ``COMPILED_RECOMPILE_LIMIT`` (graphs of earlier models count against it)."""
    if not compiled:
        return 2
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = COMPILED_RECOMPILE_LIMIT
    return COMPILED_WARMUP


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def training_step(model: torch.nn.Module, batch: int, seq: int, device: str) -> Callable[[], None]:
    """One AdamW step of next-token cross-entropy on a fixed batch of random tokens."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, model.config.vocab_size, (batch, seq + 1), device=device)

    def step() -> None:
        logits = model(data[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _train_worker(name: str, batch: int, seq: int, steps: int, device: str, threads: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(name).to(device)
    step = training_step(model, batch, seq, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = _rss_bytes()
    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    elapsed = time.perf_counter() - start
    queue.put({"tokens_per_s": batch * seq * steps / elapsed, "peak_memory_mib": peak / 2**20,
               "parameters": count_parameters(model)})


def train_throughput(name: str, batch: int, seq: int, steps: int, device: str, threads: int) -> dict:
    """Runs one model's training steps in a fresh process; returns tokens/s, peak memory, parameters."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_train_worker, args=(name, batch, seq, steps, device, threads, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _synthetic_full_caches(model: torch.nn.Module, state: ModelState, context: int) -> ModelState:
    """Replace every full-attention KV cache with random entries covering ``context`` positions."""
    layers = []
    for sublayer, layer_state in zip(model.layers, state.layers, strict=True):
        if isinstance(layer_state, KVCache) and getattr(sublayer.module, "window", 0) is None:
            shape = (*layer_state.keys.shape[:2], context, layer_state.keys.shape[-1])
            positions = torch.arange(context, device=layer_state.keys.device)
            keys = torch.randn(shape, device=positions.device)
            layer_state = KVCache.from_tensors(keys, torch.randn_like(keys), positions)
        layers.append(layer_state)
    return ModelState(layers, context)


@torch.inference_mode()
def _prefilled(name: str, context: int, piece: int, max_real_attention: int, device: str, compiled: bool = False):
    """(decode step, state after ``context`` tokens, next token, prefill seconds or None when synthetic); the step
    is the model, or with ``compiled`` its ``torch.compile(fullgraph=True)`` form (the prefill runs eagerly)."""
    torch.manual_seed(0)
    model = build_model(name).to(device).eval()
    has_full_attention = model.config.arch == "transformer"
    synthetic = has_full_attention and context > max_real_attention
    prompt = torch.randint(0, model.config.vocab_size, (1, 1 if synthetic else context), device=device)
    start = time.perf_counter()
    state = None
    for begin in range(0, prompt.shape[1], piece):
        state = model(prompt[:, begin : begin + piece], state).state
    prefill_s = time.perf_counter() - start
    if synthetic:
        state = _synthetic_full_caches(model, state, context)
    step = torch.compile(model, fullgraph=True) if compiled else model
    return step, state, prompt[:, -1:], None if synthetic else prefill_s


def _decode_times(model: torch.nn.Module, state: ModelState, token: torch.Tensor, steps: int, device: str):
    """Seconds of each of ``steps`` greedy decode steps; (times, state, token) to continue from."""
    times = []
    with decode_in_place():  # as generate's loop: each state is given up for the next
        for _ in range(steps):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(token, state)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            state, token = out.state, out.logits[:, -1:].argmax(-1)
    return times, state, token


@torch.inference_mode()
def decode_latency(name: str, context: int, tokens: int, piece: int, max_real_attention: int, device: str,
                   compiled: bool = False) -> dict:
    """Median seconds per decoded token after a context of ``context`` tokens."""
    warmup = _warmup_steps(compiled)
    model, state, token, prefill_s = _prefilled(name, context, piece, max_real_attention, device, compiled)
    times, _, _ = _decode_times(model, state, token, tokens + warmup, device)
    return {"ms_per_token": 1e3 * statistics.median(times[warmup:]),
            "prefill": "synthetic" if prefill_s is None else "real", "prefill_s": prefill_s}


@torch.inference_mode()
def interleaved_decode_ratio(name: str, peer: str, context: int, tokens: int, rounds: int, piece: int,
                             max_real_attention: int, device: str, compiled: bool = False) -> dict:
    """Model and peer prefilled side by side, then ``rounds`` alternating bursts of ``tokens`` decode steps each;
    the median of the per-round ratios of median step times. Load that drifts between rounds cancels out."""
    warmup = _warmup_steps(compiled)
    runs = {n: _prefilled(n, context, piece, max_real_attention, device, compiled)[:3] for n in (peer, name)}
    for n, (model, state, token) in runs.items():
        runs[n] = (model, *_decode_times(model, state, token, warmup, device)[1:])
    ratios, medians = [], {peer: [], name: []}
    for _ in range(rounds):
        for n in (peer, name):
            model, state, token = runs[n]
            times, state, token = _decode_times(model, state, token, tokens, device)
            runs[n] = (model, state, token)
            medians[n].append(statistics.median(times))
        ratios.append(medians[name][-1] / medians[peer][-1])
    return {"ratio": statistics.median(ratios), "rounds": rounds,
            "ms_per_token": 1e3 * statistics.median(medians[name]),
            "peer_ms_per_token": 1e3 * statistics.median(medians[peer])}


def _pair(first: dict, second: dict, key: str) -> float:
    return (first[key] + second[key]) / 2


def train_table(args: argparse.Namespace, seq: int) -> dict:
    """Tokens/s and peak memory of every architecture, each measured between two runs of the peer (P A P B P ...)
    so that its ratio to the peer compares runs minutes apart at most, whatever the machine's load does."""
    print(f"\ntraining: batch {args.batch} x seq {seq}, {args.train_steps} steps after one warm-up, size {args.size}, "
          f"{args.threads} thread(s); ratios against {args.peer} run just before and just after")
    print(f"| model | params | tokens/s | × {args.peer} | peak MiB | × {args.peer} |")
    print("|---|---|---|---|---|---|")
    peer_name = f"{args.peer}-{args.size}"

    def run(name: str) -> dict:
        return train_throughput(name, args.batch, seq, args.train_steps, args.device, args.threads)

    rows, before = {}, run(peer_name)
    peer_runs = [before]
    for arch in args.archs:
        name = f"{arch}-{args.size}"
        if name == peer_name:
            continue
        row = run(name)
        after = run(peer_name)
        peer_runs.append(after)
        row["peer_tokens_per_s"] = _pair(before, after, "tokens_per_s")
        row["speed_ratio"] = row["tokens_per_s"] / row["peer_tokens_per_s"]
        row["memory_ratio"] = row["peak_memory_mib"] / _pair(before, after, "peak_memory_mib")
        rows[name] = row
        print(f"| {name} | {row['parameters']:,} | {row['tokens_per_s']:.0f} | {row['speed_ratio']:.2f} | "
              f"{row['peak_memory_mib']:.0f} | {row['memory_ratio']:.2f} |", flush=True)
        before = after
    rows[peer_name] = {"runs": peer_runs, "parameters": peer_runs[0]["parameters"],
                       "tokens_per_s": statistics.median(r["tokens_per_s"] for r in peer_runs),
                       "peak_memory_mib": statistics.median(r["peak_memory_mib"] for r in peer_runs)}
    print(f"| {peer_name} (median of {len(peer_runs)} runs) | {rows[peer_name]['parameters']:,} | "
          f"{rows[peer_name]['tokens_per_s']:.0f} | 1 | {rows[peer_name]['peak_memory_mib']:.0f} | 1 |")
    return rows


def decode_table(args: argparse.Namespace) -> dict:
    """ms per decoded token vs context for every architecture; the ratio at the first context comes from
    ``interleaved_decode_ratio`` (model and peer alternating in ``--decode-rounds`` bursts)."""
    print(f"\ndecode latency{' (compiled)' if args.compile_decode else ''}, ms per token (s = synthetic "
          f"full-attention cache, see module doc); ratio at {args.contexts[0]} against {args.decode_peer}: median "
          f"of {args.decode_rounds} alternating bursts")
    print("| model | " + " | ".join(str(c) for c in args.contexts) + f" | × {args.decode_peer} |")
    print("|---|" + "---|" * (len(args.contexts) + 1))
    out = {}
    peer_name = f"{args.decode_peer}-{args.size}"
    for arch in args.archs:
        name = f"{arch}-{args.size}"
        try:
            paired = interleaved_decode_ratio(name, peer_name, args.contexts[0], args.decode_tokens,
                                              args.decode_rounds, args.prefill_piece,
                                              args.max_real_attention_prefill, args.device, args.compile_decode)
            rows = {c: decode_latency(name, c, args.decode_tokens, args.prefill_piece,
                                      args.max_real_attention_prefill, args.device, args.compile_decode)
                    for c in args.contexts}
        except Exception as err:  # noqa: BLE001 -- a compiler failure is a result to report, not a crash
            if not args.compile_decode:
                raise
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            out[name] = {"error": message}
            print(f"| {name} | compile failed: {message} |", flush=True)
            continue
        ratio = paired["ratio"]
        out[name] = {"contexts": {str(c): row for c, row in rows.items()},
                     "peer_ms_per_token": paired["peer_ms_per_token"], "paired_ms_per_token": paired["ms_per_token"],
                     "ratio_to_peer": ratio, "rounds": paired["rounds"]}
        cells = " | ".join(f"{r['ms_per_token']:.2f}{'s' if r['prefill'] == 'synthetic' else ''}"
                           for r in rows.values())
        print(f"| {name} | {cells} | {ratio:.2f} |", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=[*ARCHITECTURES, *VARIANTS],
                        help="architectures, or named variants such as lmm_linear (the main job's model)")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqs", type=int, nargs="+", default=[256, 1024], help="training sequence lengths")
    parser.add_argument("--peer", default="transformer", help="training peer, run before and after every model")
    parser.add_argument("--decode-peer", default="swa_transformer", help="decoding peer, run beside every model")
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--contexts", type=int, nargs="+", default=list(DEFAULT_CONTEXTS))
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--decode-rounds", type=int, default=5, help="alternating model / peer bursts for the ratio")
    parser.add_argument("--prefill-piece", type=int, default=2048)
    parser.add_argument("--max-real-attention-prefill", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--compile-decode", action="store_true",
                        help="decode through torch.compile(model, fullgraph=True), model and peer alike")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/models.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                 "threads": args.threads, "device": args.device},
                     "train": {}, "decode": {}}
    if not args.skip_train:
        for seq in args.seqs:
            results["train"][str(seq)] = train_table(args, seq)
    if not args.skip_decode:
        results["decode"] = decode_table(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
