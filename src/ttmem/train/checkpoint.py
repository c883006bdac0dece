"""Checkpoints: written atomically with a SHA-256 manifest, verified on every load, found by step.

Design: a checkpoint is one `torch.save` file `step-NNNNNNN.pt` holding everything a resumed run needs
(model, optimizer, scheduler, step, tokens seen, RNG states, the resolved config, a model record to
rebuild the model). It is written to a hidden temporary file in the same folder, flushed to disk, its
SHA-256 recorded in the folder's `manifest.json`, then renamed over its final name with `os.replace`,
which is atomic: a run killed mid-write leaves only a temporary file, which is never listed and is
removed by the next run in that folder. Every load recomputes the digest first, so a checkpoint that
loads is byte for byte the one that was written (a folder without any manifest, from before digests
were recorded, loads with a warning that it is unverified); `latest_valid_checkpoint` skips (and sets aside as
`*.corrupt`) newer checkpoints that fail the check. Files are read with `weights_only=True` (no
arbitrary code runs on load).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ttmem.fileio import IntegrityError, UnverifiedError, verify_file, warn_unverified, write_verified

FORMAT = "ttmem-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CorruptCheckpoint(ValueError):
    """A checkpoint file that cannot be trusted: damaged, truncated, or without a recorded digest."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:07d}.pt"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus format tags) to `path` atomically and record its SHA-256; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_verified(path, lambda handle: torch.save({"format": FORMAT, "version": VERSION, **payload}, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a verified checkpoint file; ValueError (CorruptCheckpoint when the file itself is
    bad) if it is missing, corrupt, unverifiable or not ours."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}" if not path.exists() else f"{path} is not a file")
    unlisted = None
    try:  # the digest is checked before any byte is unpickled
        verified = verify_file(path, "checkpoint")
    except IntegrityError as err:
        raise CorruptCheckpoint(str(err)) from None
    except UnverifiedError as err:  # refused below, after naming a damaged or foreign file as such
        verified, unlisted = False, str(err)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CorruptCheckpoint(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ttmem checkpoint")
    if unlisted:
        raise CorruptCheckpoint(unlisted)
    if not verified:
        warn_unverified(path, "checkpoint")
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


def latest_valid_checkpoint(
    folder: str | Path, set_aside: bool = True
) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """(path, payload) of the newest checkpoint that passes verification, and one line per newer
    checkpoint that did not; with `set_aside` those are renamed to `NAME.corrupt` (kept for inspection,
    never listed, never pruned). (None, None, problems) when no checkpoint is valid."""
    problems = []
    for _, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path), problems
        except CorruptCheckpoint as err:
            if not path.exists():  # another process of this run set it aside meanwhile
                continue
            if set_aside:
                aside = path.with_name(path.name + ".corrupt")
                path.replace(aside)
                err = CorruptCheckpoint(f"{err}; set aside as {aside.name}")
            problems.append(str(err))
        except ValueError:
            if path.exists():
                raise  # vanished files are skipped: set aside by another process of the same run
    return None, None, problems


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)
