"""How much outer gradient each part of a model receives at initialisation, on one MQAR batch.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/recall/grad_at_init.py \
        --out experiments/recall/results/grad_at_init.json

Every model is built as the main job's recall study builds it (dim 64, 2 layers, 2 heads, window 16, segment 32,
equal parameters) from torch seed 0; one batch of 32 MQAR examples at length 256; the answer-only loss is
back-propagated once. Prints, per parameter group (layers summed), the gradient's Frobenius norm and the
weights' norm. The question it answers: does the memory of MAC get the gradient that the memory of LMM gets?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ttmem.eval.mqar import TRAIN_STREAM, mqar_batch
from ttmem.eval.recall_study import RecallStudy, build_study_model
from ttmem.train.config import parse_overrides
from ttmem.train.objective import logits_of


def gradient_norms(spec: str, study: RecallStudy, rows: int = 32) -> dict[str, dict[str, float]]:
    """``spec`` is a preset, optionally with ModelConfig fields: ``mac-tiny:mac_output=gate``."""
    inputs, targets = (torch.from_numpy(a) for a in mqar_batch(study.recipe(), TRAIN_STREAM, 0, rows))
    torch.manual_seed(0)
    preset, _, fields = spec.partition(":")
    model = build_study_model(preset, parse_overrides(fields.split(";")) if fields else {}, study)
    loss = F.cross_entropy(logits_of(model(inputs)).flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    groups: dict[str, list[float]] = {}
    for name, p in model.named_parameters():
        parts = [k for k in name.split(".") if not k.isdigit() and k != "layers"]
        group = groups.setdefault(".".join(parts[:-1]) or parts[0], [0.0, 0.0])
        group[0] += float(p.grad.detach().norm()) ** 2 if p.grad is not None else 0.0
        group[1] += float(p.detach().norm()) ** 2
    return {"loss": float(loss.detach()),
            **{k: {"grad": g ** 0.5, "weight": w ** 0.5} for k, (g, w) in sorted(groups.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="swa_transformer-tiny,mac-tiny,mac-tiny:mac_output=gate,"
                        "mac-tiny:mac_output=residual,lmm_linear-tiny,lmm-tiny")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    study = RecallStudy()
    result = {spec: gradient_norms(spec, study) for spec in args.models.split(",")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for spec, groups in result.items():
        print(f"{spec}: loss {groups['loss']:.3f}")
        for name, g in groups.items():
            if name != "loss" and "mlp" not in name and "norm" not in name:
                print(f"  {name:40s} gradient {g['grad']:.2e}   weights {g['weight']:.2e}")


if __name__ == "__main__":
    main()
