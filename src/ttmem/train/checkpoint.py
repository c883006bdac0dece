"""Checkpoints: written atomically, found by step, refused with one clear message when unusable.

Design: a checkpoint is one `torch.save` file `step-NNNNNNN.pt` holding everything a resumed run needs
(model, optimizer, scheduler, step, RNG states, the resolved config, a model record to rebuild the
model). It is written to a hidden temporary file in the same folder, flushed to disk, then renamed
over its final name with `os.replace`, which is atomic: a run killed mid-write leaves only a
temporary file, which is never listed, so a half-written checkpoint is never loaded. Files are read
with `weights_only=True` (no arbitrary code runs on load).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "ttmem-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:07d}.pt"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus format tags) to `path` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a checkpoint file; ValueError if it is missing, corrupt or not ours."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ttmem checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {payload.get('version')}, expected {VERSION}")
    return payload


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)
