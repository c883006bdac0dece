"""Training: one config type, a trainer with exact resume and atomic checkpoints, DDP / FSDP."""

from ttmem.train.checkpoint import (
    CorruptCheckpoint,
    latest_checkpoint,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ttmem.train.config import TrainConfig, apply_settings, parse_overrides, read_config_file, resolve_config
from ttmem.train.logs import read_log
from ttmem.train.modelspec import build_from_spec, rebuild_model
from ttmem.train.resume import ResumeWarning
from ttmem.train.runlock import RunLocked, run_lock
from ttmem.train.trainer import ForcedStop, RunStorageError, Trainer, TrainingDiverged, TrainResult, build_source

__all__ = [
    "CorruptCheckpoint",
    "ForcedStop",
    "ResumeWarning",
    "RunLocked",
    "RunStorageError",
    "run_lock",
    "latest_valid_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "TrainConfig",
    "apply_settings",
    "parse_overrides",
    "read_config_file",
    "resolve_config",
    "read_log",
    "build_from_spec",
    "rebuild_model",
    "Trainer",
    "TrainingDiverged",
    "TrainResult",
    "build_source",
]
