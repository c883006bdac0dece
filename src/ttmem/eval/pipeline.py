"""Trained models back from disk, and evaluating one or several of them on the same data.

Design: anything that names a trained model — a training checkpoint, a run folder (its newest
checkpoint) or a model directory written by `save_model` — goes through `load_trained`, which rebuilds
the model from the record stored with it, so evaluation needs no config besides the data. `compare`
evaluates every model on the very same validation windows and synthetic examples and returns one row
per model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ttmem.data import NEEDLE_DEPTHS, Corpus, SyntheticTask, get_tokenizer, load_corpus
from ttmem.eval.recall import needle_grid, task_accuracy
from ttmem.models.checkpoint import RUN_CHECKPOINTS, TRAINER_STATE_FILE, is_model_dir, load_model
from ttmem.train.checkpoint import latest_checkpoint, load_checkpoint
from ttmem.train.modelspec import rebuild_model
from ttmem.train.objective import evaluate_lm


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint (directory, or an earlier version's file), or the newest checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir() and not (path / TRAINER_STATE_FILE).is_file():
        found = latest_checkpoint(path / RUN_CHECKPOINTS) or latest_checkpoint(path)
        if found is None:
            raise ValueError(f"run folder {path} holds no checkpoint")
        return found
    if not path.exists():
        raise ValueError(f"checkpoint not found: {path}")
    return path


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, checkpoint payload) of a training checkpoint, a run folder (its newest
    checkpoint) or a directory written by `ttmem.models.save_model` (whose payload holds only a
    model record)."""
    path = Path(path)
    if is_model_dir(path) and not (path / TRAINER_STATE_FILE).is_file():
        model = load_model(path, device)
        return model.eval(), {"model_record": {"spec": model.config.arch, "config": model.config.to_dict()}}
    path = resolve_checkpoint(path)
    payload = load_checkpoint(path)
    if "model_record" not in payload or "model" not in payload:
        raise ValueError(f"checkpoint {path} has no model record; it was not written by `ttmem train`")
    if payload["model_record"]["spec"].startswith("<"):
        raise ValueError(
            f"checkpoint {path} holds a model passed in from Python; rebuild it there and load its 'model' state dict"
        )
    model = rebuild_model(payload["model_record"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} does not match its own model record: {str(err).strip().splitlines()[0]}"
        ) from err
    return model.to(device).eval(), payload


def report_depths(count: int) -> np.ndarray:
    """`count` depths spread evenly over the 40 standard needle depths."""
    idx = np.unique(np.linspace(0, len(NEEDLE_DEPTHS) - 1, max(1, min(count, len(NEEDLE_DEPTHS)))).round())
    return NEEDLE_DEPTHS[idx.astype(int)]


def evaluate_model(
    model: nn.Module,
    corpus: Corpus | None,
    seq_len: int,
    *,
    eval_tokens: int = 65536,
    needle_lengths: list[int] | None = None,
    depths: int = 10,
    samples: int = 4,
    mqar_pairs: int = 0,
    tokenizer: str = "bytes",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Bits per byte on `corpus` (if given), needle grid at `needle_lengths`, MQAR accuracy."""
    out: dict[str, Any] = {}
    if corpus is not None:
        out.update(
            {
                f"val_{k}": v
                for k, v in evaluate_lm(
                    model, corpus.validation, seq_len, 8, eval_tokens, corpus.bytes_per_token
                ).items()
            }
        )
    if needle_lengths:
        grid = needle_grid(
            model,
            needle_lengths,
            report_depths(depths),
            samples,
            seed,
            get_tokenizer(tokenizer),
            progress=progress,
        )
        out["needle_grid"] = grid
        for j, length in enumerate(needle_lengths):
            out[f"needle@{length}"] = float(grid[:, j].mean())
    if mqar_pairs:
        task = SyntheticTask("mqar", seq_len, num_kv_pairs=mqar_pairs)
        out[f"mqar@{seq_len}"] = task_accuracy(model, task, 32, seed)["token"]
    return out


def compare(
    paths: list[str | Path],
    data: str = "stdlib",
    seq_len: int | None = None,
    needle_lengths: list[int] | None = None,
    tokenizer: str | None = None,
    eval_tokens: int = 65536,
    depths: int = 10,
    samples: int = 4,
    mqar_pairs: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row of metrics per model, all on the same data; seq_len / tokenizer default to the first
    checkpoint's training config."""
    if not paths:
        raise ValueError("compare needs at least one checkpoint or run folder")
    loaded = [(str(p), *load_trained(p, device)) for p in paths]
    first_cfg = loaded[0][2].get("train_config", {})
    seq_len = seq_len or int(first_cfg.get("seq_len", 256))
    tokenizer = tokenizer or first_cfg.get("tokenizer", "bytes")
    corpus = load_corpus(data, tokenizer, max_bytes=None) if data else None
    rows = []
    for name, model, payload in loaded:
        metrics = evaluate_model(
            model,
            corpus,
            seq_len,
            eval_tokens=eval_tokens,
            needle_lengths=needle_lengths,
            depths=depths,
            samples=samples,
            mqar_pairs=mqar_pairs,
            tokenizer=tokenizer,
            progress=progress,
        )
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            {
                "model": name,
                "arch": payload["model_record"]["spec"],
                "step": payload.get("step"),
                "params": params,
                **metrics,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    """Rows of scalar metrics as an aligned text (or Markdown) table."""
    keys = [k for k in rows[0] if not isinstance(rows[0][k], np.ndarray)] if rows else []

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return str(value)

    table = [keys] + [[cell(r.get(k, "")) for k in keys] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(table[0]) + " |", "|" + "|".join("---" for _ in keys) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in table[1:]])
    widths = [max(len(r[i]) for r in table) for i in range(len(keys))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in table)
