"""The main job's recall study over several seeds: is the memory model ahead past the window at every seed?

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/main_job_recall.py --threads 1            # 3 seeds
    python benchmarks/main_job_recall.py --merge A.json B.json --out all.json                     # join runs

Runs ``ttmem.eval.recall_study.run_study`` (the study ``ttmem train`` writes into its report: both models
rebuilt at dim 64, 2 layers, 2 heads, window 16, equal parameters, 800 AdamW steps of MQAR at length 256) for
every model and seed, rewrites the JSON after each run, and prints one table: mean and min–max over seeds of the
accuracy on queries whose key lies past the window stack's reach, at 1x, 2x and 4x the training length. The
summary checks the main job's target at every seed: the memory model (the first of ``--models``) at least 0.8
past the window and the sliding-window Transformer at most 0.2.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from ttmem.eval.recall_study import RecallStudy, run_study


def table(runs: list[dict]) -> tuple[str, dict]:
    models = list(dict.fromkeys(r["spec"] for r in runs))
    factors = list(runs[0]["scores"])
    head = ["model", "params", "seeds", *[f"past window {f}" for f in factors], "within window 1x",
            "train s (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_model = {}
    for spec in models:
        mine = [r for r in runs if r["spec"] == spec]
        cells = [spec, f"{mine[0]['parameters']:,}", ",".join(str(r["study"]["seed"]) for r in mine)]
        for column in [*(("beyond", f) for f in factors), ("near", "1x")]:
            values = np.array([r["scores"][column[1]][column[0]] for r in mine])
            cells.append(f"{values.mean():.3f} ({values.min():.2f}–{values.max():.2f})")
        cells.append(f"{np.mean([r['train_seconds'] for r in mine]):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
        by_model[spec] = {r["study"]["seed"]: r["scores"]["1x"]["beyond"] for r in mine}
    return "\n".join(lines), by_model


def verdict(by_model: dict, memory: str, window: str = "swa_transformer-tiny") -> list[str]:
    if memory == window or memory not in by_model or window not in by_model:
        return []
    out = []
    for seed in sorted(set(by_model[memory]) & set(by_model[window])):
        m, w = by_model[memory][seed], by_model[window][seed]
        ok = m >= 0.8 and w <= 0.2
        out.append(f"seed {seed}: {memory} {m:.3f} vs {window} {w:.3f} past the window: "
                   f"{'meets' if ok else 'misses'} the target (>= 0.8 vs <= 0.2); "
                   f"{'memory ahead' if m > w else 'memory NOT ahead'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lmm_linear-tiny,swa_transformer-tiny,deltanet-tiny")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=RecallStudy.steps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/main_job_recall.json"))
    parser.add_argument("--merge", nargs="+", type=Path, help="join the runs of these JSON files, run nothing")
    args = parser.parse_args()
    if args.merge:
        runs = [r for path in args.merge for r in json.loads(path.read_text())["runs"]]
    else:
        torch.set_num_threads(args.threads)
        runs = []
        for spec in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                runs.append(run_study(spec, {}, RecallStudy(seed=seed, steps=args.steps), progress=True))
                runs[-1].pop("losses")  # the JSON keeps scores, not curves
                record = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                      "threads": torch.get_num_threads()}, "runs": runs}
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(record, indent=1))
                print(f"{spec} seed {seed}: past the window {runs[-1]['scores']['1x']['beyond']:.3f}, "
                      f"{runs[-1]['train_seconds']:.0f} s", flush=True)
    text, by_model = table(runs)
    print(text)
    memory = runs[0]["spec"]
    for line in verdict(by_model, memory):
        print(line)
    if args.merge:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": runs}, indent=1))
    print(f"chance {runs[0]['chance']:.3f}; reach {runs[0]['reach']} tokens; wrote {args.out}")


if __name__ == "__main__":
    main()
