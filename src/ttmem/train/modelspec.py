"""Building a model from a name, and rebuilding it from a checkpoint's model record.

Design: a model spec is either a preset name of `ttmem.models` or "FILE.py:FACTORY" /
"package.module:FACTORY" naming a function that takes `vocab_size=` plus the model arguments and returns
an `nn.Module` whose forward(input_ids [B, T]) returns logits [B, T, V] or an object with `.logits`.
Loading the user's own code is the one dynamic import, and it is explicit: a file runs with `runpy`,
a module is resolved with `pkgutil.resolve_name`. The record stored in checkpoints holds the spec, the
arguments and, for preset models, the full model config, so a checkpoint can be rebuilt even if presets
change later.
"""

from __future__ import annotations

import pkgutil
import runpy
from pathlib import Path
from typing import Any

from torch import nn

from ttmem.models import ModelConfig, build_model


def _load_factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ValueError(f"model file not found: {path}")
        factory = runpy.run_path(str(path), run_name=f"ttmem_user_model_{path.stem}").get(attr)
    else:
        try:
            factory = pkgutil.resolve_name(spec)
        except ImportError as err:
            raise ValueError(f"cannot import model module '{target}': {err}") from err
        except AttributeError:
            factory = None
    if not callable(factory):
        raise ValueError(f"model factory '{attr}' not found in {target}")
    return factory


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
        try:
            model = build_model(spec, **args)
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
        return build_model(ModelConfig.from_dict(record["config"]))
    model, _ = build_from_spec(
        record["spec"], {k: v for k, v in record["args"].items()}, record["args"].get("vocab_size", 256)
    )
    return model
