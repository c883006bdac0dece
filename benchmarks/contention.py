"""The main job's training step on a busy machine: step time with K other CPU-bound processes vs idle.

    PYTHONPATH=src python benchmarks/contention.py --busy 0 2 --policies default threads1 passive

Each (policy, K) cell runs the main job's model and batch (``lmm_linear-tiny``, 16 × 128 bytes, AdamW; the
``ttmem train`` defaults) in a fresh process for ``--steps`` steps after one warm-up step, while K busy
processes (pure Python loops, one core each at full demand) run beside it; the median step time is reported,
and its ratio to the same policy's idle time. A fair share of the cores predicts a ratio of (K + n) / n where n
is the number of cores the job itself would use alone (2 threads: (K + 2) / 2; one thread on an idle core:
1 until K + 1 exceeds the cores).

Policies (how the job's OpenMP threads behave; set before torch starts):
- ``default``: torch's default, one intra-op thread per core, OpenMP threads spin while they wait;
- ``passive``: as default, with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning);
- ``spin-short``: as default, with ``GOMP_SPINCOUNT=10000`` (GNU OpenMP: spin briefly, then sleep);
- ``threads1``: one intra-op thread (no parallel regions at all).

Writes JSON (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

POLICIES = {
    "default": ({}, 0),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "spin-short": ({"GOMP_SPINCOUNT": "10000"}, 0),
    "threads1": ({"OMP_NUM_THREADS": "1"}, 1),
}

_WORKER = r"""
import json, statistics, sys, time, torch
from ttmem.models import build_model
model_name = sys.argv[1]
batch, seq, steps, threads = (int(a) for a in sys.argv[2:6])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model(model_name)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = torch.randint(0, model.config.vocab_size, (batch, seq + 1))
def step():
    logits = model(data[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
step()
times = []
for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
print(json.dumps({"median_s": statistics.median(times), "times_s": times, "threads": torch.get_num_threads()}))
"""


def _busy_processes(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def measure(policy: str, busy: int, model: str, batch: int, seq: int, steps: int) -> dict:
    """Median step time of one fresh worker under ``policy`` with ``busy`` spinning processes beside it."""
    env_extra, threads = POLICIES[policy]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    spinners = _busy_processes(busy)
    try:
        time.sleep(0.5)  # let the spinners reach full speed
        done = subprocess.run([sys.executable, "-c", _WORKER, model, str(batch), str(seq), str(steps), str(threads)],
                              env=env, capture_output=True, text=True, check=True)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lmm_linear-tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/contention.json"))
    args = parser.parse_args()
    if 0 not in args.busy:
        parser.error("--busy must include 0 (the idle reference)")
    rows = []
    for policy in args.policies:
        idle = None
        for busy in sorted(args.busy):
            result = measure(policy, busy, args.model, args.batch, args.seq, args.steps)
            idle = result["median_s"] if busy == 0 else idle
            row = {"policy": policy, "busy": busy, "threads": result["threads"], "median_s": result["median_s"],
                   "times_s": result["times_s"], "ratio_to_idle": result["median_s"] / idle}
            rows.append(row)
            print(f"{policy:>9} busy={busy}: {row['median_s']:.2f} s/step (x{row['ratio_to_idle']:.2f} of idle)",
                  flush=True)
    print(f"\n{args.model}, batch {args.batch} x {args.seq}, median of {args.steps} steps, {os.cpu_count()} cores")
    print("| policy | threads | " + " | ".join(f"{b} busy: s/step (× idle)" for b in sorted(args.busy)) + " |")
    print("|---|---|" + "---|" * len(args.busy))
    for policy in args.policies:
        cells = [r for r in rows if r["policy"] == policy]
        print(f"| {policy} | {cells[0]['threads']} | "
              + " | ".join(f"{r['median_s']:.2f} (×{r['ratio_to_idle']:.2f})" for r in cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                    "machine": {"platform": platform.platform(), "cores": os.cpu_count()},
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
