"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json`` (ModelConfig).

Design choices:
- Loading rebuilds the model from the JSON config, so no code change is needed per checkpoint.
- Tensors shared between modules (tied embeddings) are stored once under their first name.
- Any mismatch is an error that names it: architecture, config fields, missing / unexpected
  tensors, shapes. Nothing is silently skipped.
- Integrity. Both files are written atomically and their SHA-256 digests are recorded in the
  directory's ``manifest.json``; every read checks the digest first, so a damaged or edited file is an
  error, never a model with garbage weights (a directory without a manifest, from an older version,
  loads with a warning). ``seal_model_dir`` re-records files changed on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from ttmem.fileio import (
    atomic_write,
    atomic_write_text,
    record_digests,
    remove_stale_temporaries,
    seal,
    verify_file,
    warn_unverified,
)
from ttmem.models.config import ModelConfig
from ttmem.models.language_model import LanguageModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def unique_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's persistent tensors, each storage once (first name wins)."""
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor
    return tensors


def save_model(model: LanguageModel, path: str | Path) -> None:
    """Write the model's weights and config under the directory ``path`` (created if needed)."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)  # left by writers that were killed
    tensors = {name: t.detach().contiguous().cpu() for name, t in unique_state_dict(model).items()}
    blob = save(tensors, metadata={"arch": model.config.arch})
    digests = {
        WEIGHTS_FILE: atomic_write(directory / WEIGHTS_FILE, lambda handle: handle.write(blob)),
        CONFIG_FILE: atomic_write_text(directory / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2) + "\n"),
    }
    record_digests(directory, digests)


def seal_model_dir(path: str | Path) -> None:
    """Record the current weights and config of a checkpoint directory as trusted (after editing them
    on purpose, or for a directory written before manifests existed)."""
    seal(path, [WEIGHTS_FILE, CONFIG_FILE])


def read_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in a checkpoint directory."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in checkpoint directory {str(path)!r}")
    _verify(config_path)
    return ModelConfig.from_dict(json.loads(config_path.read_text()))


def _verify(path: Path) -> None:
    try:
        verified = verify_file(path, "model file")
    except ValueError as err:
        raise ValueError(f"{err}; if you changed it on purpose, call ttmem.models.seal_model_dir") from None
    if not verified:
        warn_unverified(path, "model file")


def _read_weights(path: str | Path) -> dict[str, Tensor]:
    weights_path = Path(path) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in checkpoint directory {str(path)!r}")
    _verify(weights_path)
    with safe_open(str(weights_path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def load_weights(model: LanguageModel, path: str | Path) -> LanguageModel:
    """Load a checkpoint's weights into an existing model after checking they describe the same model."""
    saved = read_config(path)
    if saved.arch != model.config.arch:
        raise ValueError(f"checkpoint holds arch {saved.arch!r} but the model is {model.config.arch!r}")
    differing = [
        f"{name}: checkpoint {value!r} vs model {getattr(model.config, name)!r}"
        for name, value in saved.to_dict().items()
        if value != model.config.to_dict()[name]
    ]
    if differing:
        raise ValueError("checkpoint config differs from the model's: " + "; ".join(differing))
    weights = _read_weights(path)
    expected = unique_state_dict(model)
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise ValueError(
            "checkpoint tensors do not match the model: "
            f"missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    shapes = [
        f"{name}: checkpoint {tuple(weights[name].shape)} vs model {tuple(t.shape)}"
        for name, t in expected.items()
        if weights[name].shape != t.shape
    ]
    if shapes:
        raise ValueError("checkpoint tensor shapes differ: " + "; ".join(shapes))
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(weights[name])
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> LanguageModel:
    """Rebuild a model from ``path/config.json`` and load ``path/model.safetensors`` into it."""
    model = LanguageModel(read_config(path)).to(map_location)
    return load_weights(model, path)
