"""Model benchmark: training throughput and peak memory at equal parameter count, decode latency vs context.

    PYTHONPATH=src python benchmarks/models.py --out benchmarks/results/models.json

Training: every architecture's preset of one size (``--size``, default ``tiny``: about 2.5M parameters
each, see ``ttmem.models.presets``) runs ``--train-steps`` AdamW steps on random bytes of shape
``--batch`` × ``--seq`` after one warm-up step; tokens/s = batch · seq · steps / time. Each model runs in
its own process, so peak memory is that process's peak resident set minus its resident set just
before the first step (on CUDA: ``torch.cuda.max_memory_allocated``).

Decode: for each context length, the model reads the context (prefill, streamed in pieces of
``--prefill-piece`` tokens) and then decodes ``--decode-tokens`` tokens one at a time; the median
time per token is reported. Reading a long context through full attention costs O(L^2) on a CPU, so
for full-attention caches longer than ``--max-real-attention-prefill`` the cache is filled with random
keys and values of the right length instead (marked ``"prefill": "synthetic"``): the cost of one
decode step depends on the cache length, not on its contents. Every other model reads the context.
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
from ttmem.models import ARCHITECTURES, ModelState, build_model, count_parameters

DEFAULT_CONTEXTS = (1024, 4096, 16384, 65536)


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


@torch.no_grad()
def decode_latency(name: str, context: int, tokens: int, piece: int, max_real_attention: int, device: str) -> dict:
    """Median seconds per decoded token after a context of ``context`` tokens."""
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
    token = prompt[:, -1:]
    times = []
    for _ in range(tokens + 2):  # the first two steps are warm-up (a cache may move into a grown buffer)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(token, state)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        state, token = out.state, out.logits[:, -1:].argmax(-1)
    return {"ms_per_token": 1e3 * statistics.median(times[2:]), "prefill": "synthetic" if synthetic else "real",
            "prefill_s": None if synthetic else prefill_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--contexts", type=int, nargs="+", default=list(DEFAULT_CONTEXTS))
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--prefill-piece", type=int, default=2048)
    parser.add_argument("--max-real-attention-prefill", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/models.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                 "threads": args.threads, "device": args.device},
                     "train": {}, "decode": {}}
    if not args.skip_train:
        print(f"training throughput: batch {args.batch} x seq {args.seq}, {args.train_steps} steps, size {args.size}")
        print(f"{'model':<24}{'params':>10}{'tokens/s':>12}{'peak MiB':>10}")
        for arch in args.archs:
            name = f"{arch}-{args.size}"
            row = train_throughput(name, args.batch, args.seq, args.train_steps, args.device, args.threads)
            results["train"][name] = row
            print(f"{name:<24}{row['parameters']:>10,}{row['tokens_per_s']:>12.0f}{row['peak_memory_mib']:>10.0f}",
                  flush=True)
    if not args.skip_decode:
        print("\ndecode latency, ms per token (s = synthetic full-attention cache, see module doc)")
        print(f"{'model':<24}" + "".join(f"{c:>10}" for c in args.contexts))
        for arch in args.archs:
            name = f"{arch}-{args.size}"
            rows = {c: decode_latency(name, c, args.decode_tokens, args.prefill_piece,
                                      args.max_real_attention_prefill, args.device) for c in args.contexts}
            results["decode"][name] = {str(c): row for c, row in rows.items()}
            cells = "".join(f"{r['ms_per_token']:>9.2f}{'s' if r['prefill'] == 'synthetic' else ' '}"
                            for r in rows.values())
            print(f"{name:<24}{cells}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
