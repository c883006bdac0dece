"""Resuming a run: which checkpoint, whether the configuration may change, and what the run then uses.

Design choices:
- The run's configuration is the one stored in its checkpoint (what the steps so far were computed
  with). A resumed run compares the resolved configuration against it; a change to any setting in
  `RUN_DEFINING` (data, model, batch, schedule, optimizer, lr, seed, ...) is refused with the list of
  differences unless the caller names that key in `allow_changes`. The model cannot be changed at all
  (its weights would not fit).
- An allowed change is applied, never only written down: a new lr / weight decay / betas replaces the
  value restored from the optimizer state, a new optimizer starts with fresh state, and the scheduler's
  learning rate is recomputed from the current schedule at the resumed step. `config.yaml` therefore
  always states what the run uses from then on, and `config_history.jsonl` records every start and
  resume with the changes and which were allowed.
"""

from __future__ import annotations

import datetime
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ttmem.train.config import RUN_DEFINING, field_names

HISTORY_FILE = "config_history.jsonl"
FIXED = ("model", "model_args")  # the checkpoint's weights belong to this model
_GROUP_KEYS = {"lr": ("initial_lr",), "weight_decay": ("weight_decay",), "betas": ("betas", "momentum")}


class ResumeWarning(UserWarning):
    """Something about a resumed run the user should know (a skipped checkpoint, a changed setting)."""


def notice(message: str) -> None:
    warnings.warn(message, ResumeWarning, stacklevel=3)


def check_allowed_names(allow: Iterable[str]) -> set[str]:
    allowed = set(allow)
    unknown = sorted(allowed - set(field_names()))
    if unknown:
        raise ValueError(f"--allow-change names unknown config keys {unknown}; valid keys: {', '.join(field_names())}")
    fixed = sorted(allowed & set(FIXED))
    if fixed:
        raise ValueError(f"{', '.join(fixed)} cannot change on resume: the checkpoint's weights belong to its model")
    return allowed


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, str)) else str(value)


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())


def refuse_unallowed(changes: dict[str, tuple[Any, Any]], allowed: set[str], checkpoint: Path, step: int) -> None:
    """ValueError listing every run-defining change not in `allowed`."""
    refused = {k: v for k, v in changes.items() if k in RUN_DEFINING and k not in allowed}
    if refused:
        raise ValueError(
            f"resuming {checkpoint} would change the run: {format_changes(refused)}; resume with the run's "
            f"settings, or pass --allow-change {','.join(refused)} to use the new values from step {step + 1} on "
            f"(recorded in {HISTORY_FILE})"
        )


def fresh_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimizer's group settings before a checkpoint's state replaces them."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def apply_changes(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    fresh: list[dict[str, Any]],
    changes: dict[str, tuple[Any, Any]],
    step: int,
) -> None:
    """Put allowed hyperparameter changes into the restored optimizer and re-derive every group's lr
    from the current schedule at `step` (so a changed lr, warm-up or length takes effect now)."""
    groups = optimizer.param_groups
    for name, keys in _GROUP_KEYS.items():
        if name not in changes:
            continue
        for group, new in zip(groups, fresh, strict=True):
            for key in keys:
                if key in new and key in group:
                    group[key] = new[key]
    scheduler.last_epoch = step
    scheduler.base_lrs = [group["initial_lr"] for group in groups]
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [group["lr"] for group in groups]


def record_history(out_dir: Path, entry: dict[str, Any], restart: bool = False) -> None:
    """Append one entry (a start or a resume) to the run's config history; `restart` begins a new one."""
    path = out_dir / HISTORY_FILE
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with path.open("w" if restart else "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"time": stamp, **entry}) + "\n")
