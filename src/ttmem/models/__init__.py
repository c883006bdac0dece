"""Language models assembled from ttmem layers: one config type, presets by name, streaming
generation, safetensors checkpoints."""

from ttmem.models.checkpoint import load_model, load_weights, save_model, seal_model_dir
from ttmem.models.config import ARCHITECTURES, ModelConfig
from ttmem.models.language_model import (
    LanguageModel,
    ModelOutput,
    ModelState,
    build_model,
    count_parameters,
)
from ttmem.models.presets import MODEL_PRESETS

__all__ = [
    "ARCHITECTURES",
    "MODEL_PRESETS",
    "LanguageModel",
    "ModelConfig",
    "ModelOutput",
    "ModelState",
    "build_model",
    "count_parameters",
    "load_model",
    "load_weights",
    "save_model",
    "seal_model_dir",
]
