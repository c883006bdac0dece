"""Building a model from a name, and rebuilding it from a checkpoint's model record.

Design: a model spec is either a preset name of `ttmem.models` (imported lazily, so the trainer
works with any module) or "FILE.py:FACTORY" / "package.module:FACTORY" naming a function that takes
`vocab_size=` plus the model arguments and returns an `nn.Module` whose forward(input_ids [B, T])
returns logits [B, T, V] or an object with `.logits`. The record stored in checkpoints holds the
spec, the arguments and, for preset models, the full model config, so a checkpoint can be rebuilt
even if presets change later.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from torch import nn


def _load_factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(f"ttmem_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"cannot import model module '{target}': {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model factory '{attr}' not found in {target}")
    return factory


def _models_package(spec: str):
    try:
        return importlib.import_module("ttmem.models")
    except ImportError as err:
        raise ValueError(
            f"model preset '{spec}' needs the ttmem.models package, which failed to import: {err}"
        ) from err


def build_from_spec(spec: str, model_args: dict[str, Any], vocab_size: int) -> tuple[nn.Module, dict[str, Any]]:
    """(model, record) for a preset name or FILE.py:FACTORY / module:FACTORY spec."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model must be a preset name or FILE.py:FACTORY, got {spec!r}")
    args = dict(model_args)
    args.setdefault("vocab_size", vocab_size)
    if ":" in spec:
        try:
            model = _load_factory(spec)(**args)
        except TypeError as err:
            raise ValueError(f"model factory {spec} rejected its arguments {sorted(args)}: {err}") from err
    else:
        models = _models_package(spec)
        try:
            model = models.build_model(spec, **args)
        except TypeError as err:
            raise ValueError(f"model preset '{spec}' rejected the arguments {sorted(args)}: {err}") from err
    if not isinstance(model, nn.Module):
        raise TypeError(f"model spec {spec} built a {type(model).__name__}, expected a torch.nn.Module")
    record: dict[str, Any] = {"spec": spec, "args": args}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        record["config"] = config.to_dict()
    return model, record


def rebuild_model(record: dict[str, Any]) -> nn.Module:
    """The (untrained) model a checkpoint's record describes."""
    if "config" in record and ":" not in record["spec"]:
        models = _models_package(record["spec"])
        return models.build_model(models.ModelConfig.from_dict(record["config"]))
    model, _ = build_from_spec(
        record["spec"], {k: v for k, v in record["args"].items()}, record["args"].get("vocab_size", 256)
    )
    return model
