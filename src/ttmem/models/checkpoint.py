"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``config.json`` (ModelConfig).

This is the one on-disk form of a model. ``save_model`` writes it; every training checkpoint of
``ttmem train`` is such a directory too (``RUN/checkpoints/step-NNNNNNN/``, with the optimizer, RNG and
trainer state in a ``trainer.pt`` beside the two files). ``load_model`` therefore reads a saved model
directory, a training checkpoint directory, or a run directory (its newest checkpoint).

Design choices:
- Loading rebuilds the model from the JSON config, so no code change is needed per checkpoint.
- Tensors shared between modules (tied embeddings) are stored once under their first name; the other
  names are listed in the file's metadata (``aliases``), so a full state dict can be rebuilt from it.
- Any mismatch is an error that names it: architecture, config fields, missing / unexpected
  tensors, shapes. Nothing is silently skipped.
- Integrity. Both files are written atomically and their SHA-256 digests are recorded in the
  directory's ``manifest.json``; every read checks the digest first, so a damaged or edited file is an
  error, never a model with garbage weights (a directory without a manifest, from an older version,
  loads with a warning). ``seal_model_dir`` re-records files changed on purpose.
"""

from __future__ import annotations

import json
import re
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
TRAINER_STATE_FILE = "trainer.pt"  # present in training checkpoints only
RUN_CHECKPOINTS = "checkpoints"  # a run directory's folder of checkpoints
STEP_DIR = re.compile(r"^step-(\d+)$")  # one training checkpoint: RUN/checkpoints/step-NNNNNNN/
LEGACY_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")  # the single-file checkpoints of earlier versions


def shared_aliases(model: nn.Module) -> dict[str, str]:
    """{name: first name} for every state-dict entry that shares its storage with an earlier one (tied
    embeddings)."""
    first: dict[tuple[int, int, tuple[int, ...]], str] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def unique_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's persistent tensors, each storage once (first name wins)."""
    aliases = shared_aliases(model)
    return {name: t for name, t in model.state_dict().items() if name not in aliases}


def weights_blob(state: dict[str, Tensor], aliases: dict[str, str], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of `state` without the `aliases` entries (recorded in the metadata instead)."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in state.items() if name not in aliases}
    return save(tensors, metadata={**metadata, "aliases": json.dumps(aliases, sort_keys=True)})


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a weights file, aliases (tied names) included; the caller verifies the file first."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        aliases = json.loads((handle.metadata() or {}).get("aliases", "{}"))
    tensors.update({alias: tensors[source] for alias, source in aliases.items()})
    return tensors


def save_model(model: LanguageModel, path: str | Path) -> None:
    """Write the model's weights and config under the directory ``path`` (created if needed)."""
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel, got {type(model).__name__}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)  # left by writers that were killed
    blob = weights_blob(model.state_dict(), shared_aliases(model), {"arch": model.config.arch})
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
    """The ModelConfig stored in a model directory, training checkpoint or run directory (newest)."""
    config_path = resolve_model_dir(path) / CONFIG_FILE
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


def is_model_dir(path: str | Path) -> bool:
    """True for a directory holding a model's weights and config (saved, or a training checkpoint)."""
    path = Path(path)
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def step_dirs(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoint directories `step-NNNNNNN` in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir())


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory `path` names: itself (a saved model or a training checkpoint), or a run
    directory's (or its checkpoint folder's) newest checkpoint. ValueError that says what to do otherwise."""
    path = Path(path)
    if LEGACY_STEP_FILE.match(path.name) and path.is_file():
        raise ValueError(
            f"{path} is a single-file training checkpoint of an earlier ttmem version; `ttmem eval` and "
            "`ttmem generate` read it (and ttmem.eval.load_trained in Python); resuming the run writes checkpoints "
            "in the current format, which load_model reads"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"nothing at {str(path)!r}: expected a model directory ({WEIGHTS_FILE} + {CONFIG_FILE}), a training "
            "checkpoint or a run directory"
        )
    if is_model_dir(path):
        return path
    if (path / TRAINER_STATE_FILE).is_file():
        raise ValueError(
            f"checkpoint {path} holds a model built by a custom factory (it has no {CONFIG_FILE}); rebuild it "
            "with that factory and load its weights with ttmem.eval.load_trained"
        )
    found = step_dirs(path / RUN_CHECKPOINTS) or step_dirs(path)
    if found:
        return resolve_model_dir(found[-1][1])
    legacy = sorted(p for folder in (path / RUN_CHECKPOINTS, path) if folder.is_dir() for p in folder.iterdir()
                    if LEGACY_STEP_FILE.match(p.name))
    if legacy:
        return resolve_model_dir(legacy[-1])  # says what to do with it
    raise ValueError(
        f"{path} is not a model directory ({WEIGHTS_FILE} + {CONFIG_FILE}), a training checkpoint or a run "
        "directory with checkpoints"
    )


def load_weights(model: LanguageModel, path: str | Path) -> LanguageModel:
    """Load a checkpoint's weights into an existing model after checking they describe the same model."""
    path = resolve_model_dir(path)
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
    """Rebuild a model from ``config.json`` and load ``model.safetensors`` into it: ``path`` is a directory
    written by ``save_model``, a training checkpoint ``RUN/checkpoints/step-NNNNNNN``, or a run directory
    (its newest checkpoint)."""
    path = resolve_model_dir(path)
    model = LanguageModel(read_config(path)).to(map_location)
    return load_weights(model, path)
