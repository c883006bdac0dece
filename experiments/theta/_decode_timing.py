"""Decode-timing measurement shared by storage_leaks.py (KV cache) and fixed_work.py (θ-memory)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _common import table

from ttmem.security.audit import format_report, run_timing_audit


def measure(backend, label: str, out: Path, args, stem: str) -> dict:
    report = run_timing_audit(
        backend,
        trials=args.trials,
        warmup=args.warmup,
        length=args.length,
        lengths=args.lengths,
        permutations=args.permutations,
        seed=args.seed,
    )
    report.model = label
    print(format_report(report))
    samples = {int(k): v for k, v in report.length.samples.items()}
    lengths = sorted(samples)
    med = np.array([np.median(samples[n]) for n in lengths]) / 1e3
    q1 = np.array([np.quantile(samples[n], 0.25) for n in lengths]) / 1e3
    q3 = np.array([np.quantile(samples[n], 0.75) for n in lengths]) / 1e3
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].errorbar(lengths, med, yerr=[med - q1, q3 - med], marker="o", capsize=3)
    ax[0].set(xscale="log", xlabel="context length (tokens)", ylabel="decode step, median us (IQR)", title=label)
    flops = report.length.flops
    ax[1].plot(list(flops), list(flops.values()), marker="s", color="C1")
    ax[1].set(xscale="log", xlabel="context length (tokens)", ylabel="FLOPs per decode step (FlopCounterMode)")
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    summary = {
        "model": label,
        "content_anova_p": report.content.anova_p,
        "content_mi_bits": report.content.mi.bits,
        "content_mi_permutation_p": report.content.mi.p_value,
        "content_dudect_max_t": report.content.dudect_max_t,
        "length_mi_permutation_p": report.length.mi.p_value,
        "length_dudect_max_t": report.length.dudect_max_t,
        "length_trend_ns_per_token": report.length.trend.slope,
        "length_trend_p": report.length.trend.p_value,
        "length_median_ratio_longest_shortest": float(med[-1] / med[0]),
        "flops_ratio_longest_shortest": flops[lengths[-1]] / flops[lengths[0]],
        "prefix_reuse_mi_permutation_p": report.prefix_reuse.mi.p_value,
        "prefix_reuse_capacity_bits": report.prefix_reuse.capacity.bits_per_request,
    }
    print("\n" + table(["quantity", "value"], [[k, v] for k, v in summary.items()]))
    (out / f"{stem}.json").write_text(
        json.dumps({"summary": summary, "report": report.to_dict()}, indent=1, default=str)
    )
    print(f"\nsaved {out / stem}.png and .json")
    return summary


def add_args(p) -> None:
    p.add_argument("--model", default=None, help="model preset (default: the built-in tiny model)")
    p.add_argument("--trials", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--length", type=int, default=256, help="prefix length of the content classes")
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 128, 1024, 4096])
    p.add_argument("--permutations", type=int, default=1000)
