"""Scale of MAC's mixer output at initialisation: the raw product y ⊙ M(y) against a gated y ⊙ σ(norm(M(y))).

Builds ``mac-tiny`` narrowed to the MQAR recipe's shape, runs one batch of MQAR inputs, and records per MAC layer
the RMS of the mixer's input (the normalised residual stream), of the attention output y, of the fresh memory read
M(y), of the layer's output (the raw product), and of the gated form with a unit-weight RMS norm, a candidate that
was trained and did not help measurably (docs/recall.md).

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/recall/mac_scale.py \
        --out experiments/recall/results/mac_scale.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ttmem.eval.mqar import TRAIN_STREAM, MQARRecipe, mqar_batch
from ttmem.models import build_model
from ttmem.models.titans import MemoryAsContext


def rms(x: torch.Tensor) -> float:
    return float(x.detach().pow(2).mean().sqrt())


def record(module: torch.nn.Module, seen: dict, output_as: str, inputs_as: str | None = None) -> None:
    """Append the module's first output (and optionally first input) to ``seen`` on every call."""

    def hook(mod, args, output) -> None:
        seen[output_as].append(output[0])
        if inputs_as:
            seen[inputs_as].append(args[0])

    module.register_forward_hook(hook)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", default="experiments/recall/results/mac_scale.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("mac-tiny", vocab_size=64, dim=64, depth=2, heads=2, window=16, chunk_size=32,
                        segment_len=32)
    inputs, _ = mqar_batch(MQARRecipe(seq_len=args.seq_len), TRAIN_STREAM, 0, 8)
    rows = []
    for index, mixer in enumerate(m for m in model.modules() if isinstance(m, MemoryAsContext)):
        seen: dict[str, list[torch.Tensor]] = {"x": [], "y": [], "m": [], "o": []}
        record(mixer, seen, "o", inputs_as="x")
        record(mixer.attention, seen, "y")
        record(mixer.memory, seen, "m")
        rows.append((index, seen))
    with torch.no_grad():
        model(torch.from_numpy(inputs))
    report = []
    for index, seen in rows:
        y, m = torch.cat(seen["y"], 1), torch.cat(seen["m"], 1)
        row = {"layer": index, "input": rms(seen["x"][0]), "attention_y": rms(y), "memory_read": rms(m),
               "layer_output": rms(seen["o"][0]), "raw_product": rms(y * m),
               "gated": rms(y * torch.sigmoid(m * torch.rsqrt(m.pow(2).mean(-1, keepdim=True) + 1e-5)))}
        report.append(row)
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "layers": report}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
