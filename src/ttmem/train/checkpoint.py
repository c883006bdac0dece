"""Checkpoints: written atomically with SHA-256 manifests, verified on every load, found by step.

Design: the checkpoint of step N is a directory `step-NNNNNNN/` in the same form as a model saved with
`ttmem.models.save_model` — `model.safetensors` and `config.json` (for preset models; a model from a
custom factory has weights only, rebuilt from the model record) — plus `trainer.pt`, one `torch.save`
file with everything else a resumed run needs (optimizer, scheduler, step, tokens seen, RNG states, the
resolved config, the model record), and a `manifest.json` with the SHA-256 of each file. So
`ttmem.models.load_model`, `ttmem eval` and `ttmem generate` read a training checkpoint as they read a
saved model.

Atomicity: the directory is assembled under a hidden temporary name `.step-NNNNNNN.tmp-PID`, each file
flushed to disk and its digest recorded, then renamed to its final name with `os.replace`, which is
atomic: a run killed mid-write leaves only a temporary directory, which is never listed and is removed
by the next run in that folder. Every load recomputes the digests first, so a checkpoint that loads is
byte for byte the one that was written (a directory copied without its manifest loads with a warning
that it is unverified); `latest_valid_checkpoint` skips (and sets aside as `*.corrupt`) newer
checkpoints that fail the check. `trainer.pt` is read with `weights_only=True` (no arbitrary code runs
on load).

Earlier versions wrote one file `step-NNNNNNN.pt` per checkpoint (format version 1, verified through the
checkpoint folder's manifest). Such files are still listed, loaded and resumed from; the run then
continues with directories.
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from ttmem.fileio import (
    IntegrityError,
    UnverifiedError,
    atomic_write,
    atomic_write_text,
    commit_directory,
    os_error_in,
    record_digests,
    remove_directory,
    temporary_path,
    verify_file,
    warn_unverified,
    write_verified,
)
from ttmem.models.checkpoint import (
    CONFIG_FILE,
    LEGACY_STEP_FILE,
    STEP_DIR,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
    read_state_dict,
    weights_blob,
)

FORMAT = "ttmem-checkpoint"
VERSION = 2  # a directory; version 1 was a single `step-NNNNNNN.pt` file
LEGACY_VERSION = 1


class CorruptCheckpoint(ValueError):
    """A checkpoint that cannot be trusted: damaged, truncated, or without a recorded digest."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:07d}"


def _write_files(folder: Path, payload: dict[str, Any]) -> None:
    """The checkpoint's files and their manifest in `folder` (a fresh temporary directory)."""
    state = dict(payload)
    model = state.pop("model", None)
    aliases = state.pop("model_aliases", {})
    digests = {}
    if model is not None:
        blob = weights_blob(model, aliases, {"step": str(state.get("step", ""))})
        digests[WEIGHTS_FILE] = atomic_write(folder / WEIGHTS_FILE, lambda handle: handle.write(blob))
        config = (state.get("model_record") or {}).get("config")
        if config is not None:
            digests[CONFIG_FILE] = atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    record = {**state, "format": FORMAT, "version": VERSION, "model_in_safetensors": model is not None}
    digests[TRAINER_STATE_FILE] = atomic_write(folder / TRAINER_STATE_FILE, lambda handle: torch.save(record, handle))
    record_digests(folder, digests)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` as the checkpoint directory `path` atomically; returns the path.

    `payload["model"]` (a state dict, optional) goes to `model.safetensors` without the names listed in
    `payload["model_aliases"]` ({tied name: first name}); `payload["model_record"]["config"]` (if any) to
    `config.json`; everything else to `trainer.pt`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, payload)
        commit_directory(tmp, path)
    except Exception as err:
        cause = os_error_in(err)
        if cause is not None and str(cause.filename or "").startswith(str(tmp)):  # name the checkpoint instead
            final = str(cause.filename).replace(str(tmp), str(path), 1)
            raise OSError(cause.errno, cause.strerror, final) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _verify(path: Path) -> tuple[bool, str | None]:
    """(verified, why it cannot be trusted) of `path` against its folder's manifest: (True, None) if it
    matches, (False, None) without any manifest, (False, reason) without an entry; CorruptCheckpoint if
    its digest differs."""
    try:
        return verify_file(path, "checkpoint"), None
    except IntegrityError as err:
        raise CorruptCheckpoint(str(err)) from None
    except UnverifiedError as err:
        return False, str(err)


def _read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise CorruptCheckpoint(
            f"checkpoint {path} is corrupt or truncated and cannot be loaded ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a ttmem checkpoint")
    return payload


def _load_directory(path: Path) -> dict[str, Any]:
    state_file = path / TRAINER_STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path} is not a ttmem training checkpoint: it has no {TRAINER_STATE_FILE}")
    files = [p for p in (state_file, path / WEIGHTS_FILE, path / CONFIG_FILE) if p.is_file()]
    checks = [_verify(p) for p in files]  # every digest before any byte is unpickled
    unlisted = [reason for _, reason in checks if reason]
    if unlisted:
        raise CorruptCheckpoint(unlisted[0])
    if not all(verified for verified, _ in checks):
        warn_unverified(path, "checkpoint")
    payload = _read_trainer_state(state_file)
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has format version {payload.get('version')}, expected {VERSION}")
    if payload.pop("model_in_safetensors", False):
        if not (path / WEIGHTS_FILE).is_file():
            raise CorruptCheckpoint(f"checkpoint {path} has lost its {WEIGHTS_FILE}")
        try:
            payload["model"] = read_state_dict(path / WEIGHTS_FILE)
        except Exception as err:  # safetensors raises its own error types on a damaged header
            raise CorruptCheckpoint(f"checkpoint {path / WEIGHTS_FILE} is corrupt or truncated ({err})") from None
    return payload


def _load_legacy_file(path: Path) -> dict[str, Any]:
    """A single-file checkpoint of format version 1, verified through its folder's manifest."""
    verified, unlisted = _verify(path)
    payload = _read_trainer_state(path)  # names a damaged or foreign file as such before refusing it
    if unlisted:
        raise CorruptCheckpoint(unlisted)
    if not verified:
        warn_unverified(path, "checkpoint")
    if payload.get("version") != LEGACY_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {payload.get('version')}, expected {LEGACY_VERSION}"
        )
    return payload


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a verified checkpoint (directory, or an earlier version's single file), with the
    model's full state dict under "model"; ValueError (CorruptCheckpoint when the checkpoint itself is
    bad) if it is missing, corrupt, unverifiable or not ours."""
    path = Path(path)
    if path.is_dir():
        return _load_directory(path)
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    return _load_legacy_file(path)


def save_legacy_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a single-file checkpoint of format version 1 (as earlier versions did), for migration tests
    and tools that must produce one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**payload, "format": FORMAT, "version": LEGACY_VERSION}
    return write_verified(path, lambda handle: torch.save(record, handle))


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `folder`, oldest first (a directory wins over an
    earlier version's file of the same step)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir(), key=lambda p: p.is_dir()):  # files first, so directories win
        if (m := STEP_DIR.match(p.name)) and p.is_dir() or (m := LEGACY_STEP_FILE.match(p.name)) and p.is_file():
            found[int(m.group(1))] = p
    return sorted(found.items())


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


def remove_checkpoint(path: str | Path) -> None:
    """Delete one checkpoint (directory or an earlier version's file)."""
    path = Path(path)
    if path.is_dir():
        remove_directory(path)
    else:
        path.unlink(missing_ok=True)


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(folder)[:-keep]:
        remove_checkpoint(path)
