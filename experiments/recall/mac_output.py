"""MAC's combination o = y ⊗ M(y) on the main job's recall study: product, gate or residual.

Trains ``mac-tiny`` with ``mac_output=OUTPUT`` exactly as the main job's recall study trains its models (dim 64,
2 layers, 2 heads, segment 32, equal parameters, 800 AdamW steps of 32 MQAR examples at length 256), on one
thread, and writes the study's result (accuracy by key distance at 1x / 2x / 4x the length) as JSON.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/recall/mac_output.py --output residual --seed 0 \\
        --out experiments/recall/results/mac_output_residual_s0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ttmem.eval.recall_study import RecallStudy, run_study
from ttmem.models.config import MAC_OUTPUTS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", choices=MAC_OUTPUTS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=RecallStudy.steps)
    p.add_argument("--spec", default="mac-tiny")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = run_study(args.spec, {"mac_output": args.output}, RecallStudy(seed=args.seed, steps=args.steps),
                       progress=True)
    result.pop("losses")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"mac_output={args.output} seed {args.seed}: final loss {result['final_loss']:.3f}, "
          f"{result['train_seconds']:.0f} s; past the reach / within: "
          + ", ".join(f"{f} {s['beyond']:.3f} / {s['near']:.3f}" for f, s in result["scores"].items()))


if __name__ == "__main__":
    main()
