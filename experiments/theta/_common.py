"""Helpers shared by the θ-learning experiment scripts: backends, tables, output folder, torch settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")

from ttmem.security.backends import Backend, build_backend  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default="runs/theta", help="folder for plots and JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 keeps timings steady)")
    return p


def setup(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def backend(kind: str, preset: str | None, vocab: int = 64) -> tuple[Backend, str]:
    """A model preset when given, else the TinyLM of that kind ("attention" or "theta")."""
    name = preset or f"tiny-{kind}:{vocab}"
    return build_backend(name), name


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
