"""Run logs: JSON lines always, TensorBoard and Weights & Biases (offline) when asked for.

Design: one JSON object per line in `log.jsonl`, appended and flushed per record, so a killed run
keeps its log. A resumed run first drops the records of steps after its checkpoint, so the log
of an interrupted-and-resumed run reads like one uninterrupted run; lines it cannot parse (one cut by
a kill, or damaged on disk) are moved to `log.jsonl.damaged`, not dropped. Records whose write failed
(a full disk, a read-only folder) are kept in `RunLogger.unwritten`; the trainer stores them in the
checkpoint it writes before stopping, and the resumed run appends them (`append_records`).
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from ttmem.fileio import atomic_write_text


def truncate_log(path: Path, last_step: int) -> int:
    """Keep only records with step <= last_step (and records without a step); returns how many damaged
    lines were moved to `PATH.damaged`."""
    if not path.is_file():
        return 0
    kept, damaged = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            step = record.get("step", 0) if isinstance(record, dict) else None
            if step is not None and not isinstance(step, (int, float)):
                raise ValueError
        except ValueError:  # json.JSONDecodeError is a ValueError
            if line.strip():
                damaged.append(line)
            continue
        if step is None:
            damaged.append(line)
        elif step <= last_step:
            kept.append(line)
    if damaged:
        with path.with_name(path.name + ".damaged").open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in damaged))
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(damaged)


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in records))


def read_log(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class RunLogger:
    """Writes metrics records to log.jsonl (and TensorBoard / wandb if enabled)."""

    def __init__(self, out_dir: Path, config: dict[str, Any], tensorboard: bool = False, wandb: bool = False) -> None:
        self.path = out_dir / "log.jsonl"
        self.unwritten: list[dict[str, Any]] = []
        self._tb = self._wandb = None
        if tensorboard:
            try:
                module = importlib.import_module("torch.utils.tensorboard")
            except ImportError as err:
                raise ValueError(
                    "tensorboard=true needs the 'tensorboard' package: pip install 'ttmem[logging]'"
                ) from err
            self._tb = module.SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        if wandb:
            try:
                wandb_module = importlib.import_module("wandb")
            except ImportError as err:
                raise ValueError("wandb=true needs the 'wandb' package: pip install 'ttmem[logging]'") from err
            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb_module.init(
                project="ttmem", dir=str(out_dir), config=config, mode=os.environ["WANDB_MODE"]
            )

    def log(self, record: dict[str, Any]) -> None:
        if self.unwritten:  # the log already failed: keep the order, write nothing more
            self.unwritten.append(record)
            return
        try:
            append_records(self.path, [record])
        except OSError:
            self.unwritten.append(record)
            raise
        step = record.get("step")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None and step is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
