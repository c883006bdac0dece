"""The one training configuration: a flat dataclass, read from YAML / TOML, overridden by `key=value`.

Design: defaults are the README's main job (a tiny Titans LMM with a matrix memory on the standard-library
corpus with a needle-task share, compared against a same-size sliding-window Transformer, then both rebuilt
small for the recall study). Files and command-line
overrides may only name existing fields; anything else is one ValueError naming the key and the
valid ones. Values on the command line are parsed as YAML scalars and then coerced to the field's
type, so `lr=3e-4`, `compile=true`, `betas=[0.9,0.95]` and `model_args.dim=64` all work.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ttmem.fileio import atomic_write_text

# Settings that decide what a run computes: resuming with any of them changed needs an explicit override.
RUN_DEFINING = (
    "model",
    "model_args",
    "data",
    "tokenizer",
    "val_fraction",
    "max_bytes",
    "aux_task",
    "aux_fraction",
    "seq_len",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "betas",
    "warmup_steps",
    "min_lr_ratio",
    "grad_clip",
    "precision",
    "seed",
)
# All other settings a resumed run may change freely: where and how often it reports, and how long it runs
# (a new `steps` moves the end of the cosine schedule for the steps still to come; the change is recorded).


@dataclass
class TrainConfig:
    # model
    model: str = "lmm_linear-tiny"  # preset name, or "path/to/file.py:factory" / "pkg.module:factory"
    model_args: dict = field(default_factory=dict)  # overrides passed to the model builder
    baseline: str = "swa_transformer-tiny"  # trained (or reused) and compared after the main run; "none" = off
    # data
    data: str = "stdlib"  # "stdlib", "enwik8", "hf:NAME[:CONFIG]", or a file / folder path
    tokenizer: str = "bytes"
    val_fraction: float = 0.05
    max_bytes: int = 0  # 0 = whole corpus
    aux_task: str = "needle"  # synthetic task mixed into training: "", "needle", "mqar", "copy"
    aux_fraction: float = 0.25
    seq_len: int = 128
    batch_size: int = 16  # global rows per optimizer step (all processes, all micro-steps)
    grad_accum: int = 1
    # optimisation
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 20
    steps: int = 180  # with the recall study, `ttmem train` with no arguments takes about 8 minutes on 2 CPU cores
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    precision: str = "auto"  # "auto" (bf16 where supported on GPU), "bf16", "fp32"
    compile: bool = False
    recompute: bool = False  # memory layers checkpoint segments of √n chunks for the backward (less memory, more time)
    seed: int = 0
    # runtime
    device: str = "auto"
    threads: int = 0  # CPU intra-op threads per process; 0 = torch's default (one per core)
    distributed: str = "ddp"  # used under torchrun: "ddp" or "fsdp"
    out_dir: str = "runs/ttmem"
    ckpt_every: int = 60
    keep_checkpoints: int = 2
    eval_every: int = 60
    eval_tokens: int = 16384  # validation tokens per evaluation
    log_every: int = 10
    tensorboard: bool = False
    wandb: bool = False
    report: bool = True  # evaluate and write report.md / PNGs at the end
    eval_depths: int = 10  # needle depths per length in the report (of the 40)
    eval_samples: int = 4  # needle examples per (length, depth) cell
    recall: bool = True  # the report's recall study: both models rebuilt small and trained on MQAR
    recall_args: dict = field(default_factory=dict)  # RecallStudy overrides, e.g. recall_args.steps=200
    recall_reference: str = "deltanet-tiny"  # a third model in the recall study only (a preset); "none" = off

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def config_changes(stored: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (stored value, new value)} for every setting that differs from a run's stored config
    (keys the stored config lacks, from older versions, are not compared)."""
    new = config.to_dict()
    return {
        key: (stored[key], new[key])
        for key in field_names()
        if key in stored and _normal(stored[key]) != _normal(new[key])
    }


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _unknown(key: str) -> ValueError:
    return ValueError(f"unknown config key '{key}'; valid keys: {', '.join(field_names())}")


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """`value` converted to the field's type, or a ValueError naming the key."""
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            return "" if value is None else str(value)
        if kind is tuple:
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return tuple(float(v) for v in value)
        if kind is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"config key '{key}' expects {kind.__name__}, got {value!r}")


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in field_names()}


def apply_settings(config: TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with `settings` applied; dotted keys reach into dict fields."""
    types = _field_types()
    updates: dict[str, Any] = {}
    for key, value in settings.items():
        top, _, sub = key.partition(".")
        if top not in types:
            raise _unknown(key)
        if sub:
            if types[top] is not dict:
                raise ValueError(f"config key '{top}' is not a table; '{key}' is not valid")
            current = dict(updates.get(top, getattr(config, top)))
            current[sub] = value
            updates[top] = current
        else:
            updates[top] = _coerce(key, value, types[top])
    return dataclasses.replace(config, **updates)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["lr=3e-4", "model_args.dim=64"] -> {"lr": 0.0003, "model_args.dim": 64} (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override '{item}' is not of the form key=value")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a .yaml / .yml / .toml / .json file (a flat table, dict fields as sub-tables)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {path} is a directory; pass a .yaml, .yml, .toml or .json file")
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"config file {path} is not UTF-8 text (a binary file?)") from None
    if path.suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised only on Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from err
    elif path.suffix in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    else:
        raise ValueError(f"config file {path} must end in .yaml, .yml, .toml or .json")
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table of key = value settings")
    return data


def resolve_config(config_file: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the file's settings, then the command-line overrides; validated."""
    config = TrainConfig()
    if config_file:
        config = apply_settings(config, read_config_file(config_file))
    config = apply_settings(config, parse_overrides(overrides or []))
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Range checks that do not need the model or the data."""
    positive = ("seq_len", "batch_size", "grad_accum", "steps", "ckpt_every", "log_every", "eval_every")
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"config key '{name}' must be >= 1, got {getattr(config, name)}")
    if config.lr <= 0:
        raise ValueError(f"config key 'lr' must be > 0, got {config.lr}")
    if config.threads < 0:
        raise ValueError(f"config key 'threads' must be >= 0 (0 = torch's default), got {config.threads}")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"config key 'precision' must be auto, bf16 or fp32, got '{config.precision}'")
    if config.distributed not in ("ddp", "fsdp"):
        raise ValueError(f"config key 'distributed' must be ddp or fsdp, got '{config.distributed}'")
    if not 0.0 <= config.aux_fraction <= 1.0:
        raise ValueError(f"config key 'aux_fraction' must be in [0, 1], got {config.aux_fraction}")
    if len(config.betas) != 2:
        raise ValueError(f"config key 'betas' needs two numbers, got {list(config.betas)}")
