"""Benchmark: Nested Learning optimisers on a byte-level language model, and EWC against forgetting.

Corpus: the Python standard library's own files, read as bytes from ``sysconfig.get_paths()["stdlib"]``
(``site-packages`` excluded). Each file goes to train / val / test by a hash of its path relative to the
stdlib root (80 / 10 / 10), so the split is deterministic for a given Python version.

1. **Optimiser sweep.** One small causal Transformer (``build_model``, swappable for ``ttmem.models``)
   is trained on the ``.py`` files for the same number of steps with AdamW, M3, DeepMomentumGD and
   MomentumGD, each at a few learning rates (warm-up then cosine decay, gradient clipping 1.0, no weight
   decay). The learning rate with the best validation bits per byte is picked; its test bits per byte and
   training wall time are reported.
2. **Continual learning.** Train on corpus A (``.py``), then on corpus B (the stdlib's other text files:
   ``.txt``, ``.decTest``, ``.xml``, ...), with and without an EWC penalty whose Fisher comes from corpus
   A. Forgetting is the increase of A's validation bits per byte during phase B.

Writes JSON to ``--out`` and prints tables. ``python benchmarks/optimizers.py --help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ttmem.optim import EWC, M3, DeepMomentumGD, MomentumGD

OTHER_TEXT_SUFFIXES = {
    ".txt", ".rst", ".decTest", ".xml", ".html", ".toml", ".json", ".c", ".h", ".def", ".cfg", ".ini",
    ".csv", ".pem", ".bat", ".ps1", ".sh", ".md", ".css", ".js", ".tcl", ".xsl", ".dtd", ".in", ".py-tpl",
}
SPLITS = ("train", "val", "test")
LR_GRIDS = {
    "adamw": (1e-2, 3e-2, 1e-1),
    "m3": (3e-3, 1e-2, 3e-2),
    "deep_momentum": (0.3, 1.0, 3.0),
    "momentum": (0.3, 1.0, 3.0),
}


# -- corpus ----------------------------------------------------------------------------------------
def split_of(relative_path: str) -> str:
    """Deterministic 80/10/10 assignment of a file to a split by the SHA-1 of its relative path."""
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def stdlib_corpus(kind: str) -> dict[str, torch.Tensor]:
    """Bytes of the stdlib's ``.py`` files (``kind="python"``) or other text files (``"other"``) per split."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: dict[str, list[bytes]] = {split: [] for split in SPLITS}
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        for name in sorted(files):
            path = Path(directory) / name
            wanted = path.suffix == ".py" if kind == "python" else path.suffix in OTHER_TEXT_SUFFIXES
            if not wanted or path.is_symlink():
                continue
            data = path.read_bytes()
            if b"\x00" in data:  # binary despite the suffix
                continue
            chunks[split_of(path.relative_to(root).as_posix())].append(data)
    corpus = {}
    for split, parts in chunks.items():
        joined = b"\n".join(parts)
        corpus[split] = torch.frombuffer(bytearray(joined), dtype=torch.uint8).long()
    return corpus


def random_windows(data: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch, length + 1)`` byte windows at random offsets."""
    starts = torch.randint(0, data.numel() - length - 1, (batch,), generator=gen)
    return torch.stack([data[s : s + length + 1] for s in starts.tolist()])


# -- model -----------------------------------------------------------------------------------------
class ByteTransformer(nn.Module):
    """Embedding + learned positions + pre-norm causal Transformer encoder layers + byte head."""

    def __init__(self, d_model: int, layers: int, heads: int, context: int):
        super().__init__()
        self.embed = nn.Embedding(256, d_model)
        self.position = nn.Parameter(torch.randn(context, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 256)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` bytes -> ``(batch, time, 256)`` logits."""
        length = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length)
        h = self.embed(tokens) + self.position[:length]
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return self.head(self.norm(h))


def build_model(args: argparse.Namespace) -> nn.Module:
    """The one place the benchmark's model is made; swap for a ``ttmem.models`` preset later."""
    torch.manual_seed(args.seed)
    return ByteTransformer(args.d_model, args.layers, args.heads, args.seq_len)


def lm_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats."""
    logits = model(windows[:, :-1])
    return F.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1))


@torch.no_grad()
def bits_per_byte(model: nn.Module, data: torch.Tensor, args: argparse.Namespace) -> float:
    """Validation / test bits per byte on a fixed set of windows."""
    gen = torch.Generator().manual_seed(1234)
    windows = random_windows(data, args.eval_windows, args.seq_len, gen)
    losses = [lm_loss(model, windows[i : i + 32]).item() * len(windows[i : i + 32])
              for i in range(0, len(windows), 32)]
    return sum(losses) / len(windows) / math.log(2)


# -- optimisers ------------------------------------------------------------------------------------
def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if name == "m3":
        # Muon convention: orthogonalise the hidden linear maps, not embeddings/head/positions/1-D.
        hidden = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
        other = [p for n, p in model.named_parameters() if not (n.startswith("blocks.") and p.dim() == 2)]
        return M3([{"params": hidden}, {"params": other, "orthogonalize": False}], lr=lr)
    if name == "deep_momentum":
        return DeepMomentumGD(model.parameters(), lr=lr, momentum=0.9, hidden=8, inner_lr=1e-3)
    if name == "momentum":
        return MomentumGD(model.parameters(), lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(LR_GRIDS)}")


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over 5% of the steps, then cosine decay to 10%."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train(model, optimizer, data, steps, args, seed, penalty=None) -> tuple[float, bool]:
    """Train in place; returns (wall seconds, finished without a non-finite loss)."""
    gen = torch.Generator().manual_seed(seed)
    base = [group["lr"] for group in optimizer.param_groups]
    start = time.perf_counter()
    for step in range(steps):
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * lr_factor(step, steps)
        loss = lm_loss(model, random_windows(data, args.batch_size, args.seq_len, gen))
        if penalty is not None:
            loss = loss + penalty(model)
        if not torch.isfinite(loss):
            return time.perf_counter() - start, False
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return time.perf_counter() - start, True


# -- experiments -----------------------------------------------------------------------------------
def optimizer_sweep(args, python_corpus) -> tuple[list[dict], list[dict], dict[str, nn.Module]]:
    """Every (optimizer, lr) run, the best run per optimizer, and the best run's trained model."""
    runs = []
    for name in args.optimizers:
        for lr in LR_GRIDS[name]:
            model = build_model(args)
            seconds, finite = train(model, make_optimizer(name, model, lr), python_corpus["train"],
                                    args.steps, args, seed=args.seed)
            val = bits_per_byte(model, python_corpus["val"], args) if finite else float("nan")
            runs.append({"optimizer": name, "lr": lr, "val_bpb": val, "train_seconds": seconds,
                         "diverged": not finite, "model": model if finite else None})
            print(f"  {name:14s} lr={lr:<6g} val bpb={val:.4f}  {seconds:6.1f}s", flush=True)
    best, best_models = [], {}
    for name in args.optimizers:
        candidates = [r for r in runs if r["optimizer"] == name and not r["diverged"]]
        if not candidates:
            best.append({"optimizer": name, "lr": None, "val_bpb": None, "test_bpb": None,
                         "train_seconds": None})
            continue
        winner = min(candidates, key=lambda r: r["val_bpb"])
        test = bits_per_byte(winner["model"], python_corpus["test"], args)
        best_models[name] = winner["model"]
        best.append({**{k: v for k, v in winner.items() if k != "model"}, "test_bpb": test})
    for run in runs:
        run.pop("model")
    return runs, best, best_models


def continual(args, corpus_a, corpus_b, lr, model_a: nn.Module | None) -> list[dict]:
    """Phase A (reusing the sweep's model trained with the same optimizer and lr, if given), then B."""
    model = model_a
    if model is None:
        model = build_model(args)
        train(model, make_optimizer(args.continual_optimizer, model, lr), corpus_a["train"], args.steps, args,
              seed=args.seed)
    a_before = bits_per_byte(model, corpus_a["val"], args)
    b_before = bits_per_byte(model, corpus_b["val"], args)
    gen = torch.Generator().manual_seed(args.seed + 7)
    fisher_batches = [(random_windows(corpus_a["train"], args.batch_size, args.seq_len, gen),)
                      for _ in range(args.fisher_batches)]
    rows = []
    for lam in (0.0, *args.ewc_lambdas):
        phase_b = copy.deepcopy(model)
        ewc = None
        if lam > 0:
            ewc = EWC(lam=lam)
            ewc.consolidate(phase_b, fisher_batches, lambda m, batch: lm_loss(m, batch[0]), mode="per_batch")
        seconds, finite = train(phase_b, make_optimizer(args.continual_optimizer, phase_b, lr),
                                corpus_b["train"], args.continual_steps, args, seed=args.seed + 1,
                                penalty=None if ewc is None else ewc.penalty)
        a_after = bits_per_byte(phase_b, corpus_a["val"], args) if finite else float("nan")
        b_after = bits_per_byte(phase_b, corpus_b["val"], args) if finite else float("nan")
        rows.append({"ewc_lambda": lam, "a_val_bpb_before": a_before, "a_val_bpb_after": a_after,
                     "forgetting_bpb": a_after - a_before, "b_val_bpb_before": b_before,
                     "b_val_bpb_after": b_after, "phase_b_seconds": seconds, "diverged": not finite})
        print(f"  EWC lambda={lam:<8g} forgetting={a_after - a_before:+.4f} bpb  B val={b_after:.4f}",
              flush=True)
    return rows


def print_tables(result: dict) -> None:
    print("\nOptimiser comparison (byte-level LM on stdlib .py files, tuned lr)")
    print("| optimizer | best lr | val bpb | test bpb | train time (s) |\n|---|---|---|---|---|")
    for row in result["best"]:
        if row["lr"] is None:
            print(f"| {row['optimizer']} | diverged at every lr | | | |")
            continue
        print(f"| {row['optimizer']} | {row['lr']:g} | {row['val_bpb']:.4f} | {row['test_bpb']:.4f} "
              f"| {row['train_seconds']:.1f} |")
    if result.get("continual"):
        name = result["config"]["continual_optimizer"]
        print(f"\nContinual learning ({name}, lr {result['continual_lr']:g}): .py files, then other text")
        print("| EWC lambda | A val bpb after A | A val bpb after B | forgetting | B val bpb after B |")
        print("|---|---|---|---|---|")
        for row in result["continual"]:
            print(f"| {row['ewc_lambda']:g} | {row['a_val_bpb_before']:.4f} | {row['a_val_bpb_after']:.4f} "
                  f"| {row['forgetting_bpb']:+.4f} | {row['b_val_bpb_after']:.4f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/optimizers.json")
    parser.add_argument("--optimizers", nargs="+", default=list(LR_GRIDS), choices=list(LR_GRIDS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--eval-windows", type=int, default=256)
    # One thread: the model is small, and intra-op threads suffer badly when the cores are shared.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--continual-optimizer", default="adamw", choices=list(LR_GRIDS))
    parser.add_argument("--continual-steps", type=int, default=150)
    parser.add_argument("--fisher-batches", type=int, default=16)
    parser.add_argument("--ewc-lambdas", type=float, nargs="*", default=[1e3, 1e4, 1e5])
    parser.add_argument("--skip-continual", action="store_true")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "d_model", "layers", "heads", "eval_windows", "threads",
                 "continual_steps", "fisher_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if any(lam < 0 for lam in args.ewc_lambdas):
        parser.error("--ewc-lambdas must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    python_corpus = stdlib_corpus("python")
    print("corpus A (.py) bytes: " + ", ".join(f"{s}={python_corpus[s].numel()}" for s in SPLITS))
    runs, best, best_models = optimizer_sweep(args, python_corpus)
    result = {"config": vars(args), "environment": {"python": platform.python_version(),
              "torch": torch.__version__, "threads": torch.get_num_threads()}, "runs": runs, "best": best}
    if not args.skip_continual:
        other_corpus = stdlib_corpus("other")
        print("corpus B (other text) bytes: " + ", ".join(f"{s}={other_corpus[s].numel()}" for s in SPLITS))
        tuned = next((r["lr"] for r in best if r["optimizer"] == args.continual_optimizer and r["lr"]), None)
        lr = tuned if tuned is not None else LR_GRIDS[args.continual_optimizer][1]
        model_a = best_models.get(args.continual_optimizer) if tuned is not None else None
        result["continual"] = continual(args, python_corpus, other_corpus, lr, model_a)
        result["continual_lr"] = lr
    result["total_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print_tables(result)
    print(f"\ntotal {result['total_seconds']:.0f}s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
