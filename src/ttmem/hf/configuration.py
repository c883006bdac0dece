"""``TtmemConfig``: a Hugging Face ``PretrainedConfig`` that carries a ttmem ``ModelConfig`` losslessly.

Design choices:
- The ``ModelConfig`` is stored whole under one key, ``ttmem`` (its ``to_dict()``), next to a format
  number ``ttmem_format``. It is the only source of truth: the Hugging Face-standard mirrors
  (``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
  ``tie_word_embeddings``) are derived from it on every construction, so tools that read them see the
  real shape and can never disagree with the model that gets built.
- Keeping the ttmem fields in their own dict makes "written by a newer ttmem" detectable: an unknown
  key inside it, or a larger ``ttmem_format``, is refused with one message that says to upgrade,
  instead of being silently dropped the way extra top-level keys are.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from ttmem.hf.auto_module import keep_auto_map
from ttmem.models.config import ARCHITECTURES, ModelConfig

MODEL_TYPE = "ttmem"
# Version of the layout above; bump it when a change cannot be read by older code.
FORMAT_VERSION = 1


class NotTtmemExportError(ValueError):
    """A directory or config that was not written by ``ttmem export`` / ``save_pretrained``."""


def model_config_from_dict(fields: Any, source: str = "config.json") -> ModelConfig:
    """The ModelConfig stored in an export's config, with errors that say what is wrong with the file."""
    if not isinstance(fields, dict):
        raise NotTtmemExportError(f"{source} has no 'ttmem' model fields; it is not a ttmem export")
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ModelConfig)})
    if unknown:
        raise ValueError(
            f"{source} holds model fields this ttmem does not know ({', '.join(unknown)}); "
            "it was written by a newer ttmem: upgrade ttmem to load it"
        )
    if fields.get("arch", ModelConfig.arch) not in ARCHITECTURES:
        raise ValueError(
            f"{source} holds architecture {fields['arch']!r}, which this ttmem does not have "
            f"({', '.join(ARCHITECTURES)}); if a newer ttmem wrote it, upgrade ttmem to load it"
        )
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source} holds an invalid ttmem model config: {err}") from None


@keep_auto_map
class TtmemConfig(PretrainedConfig):
    """Hugging Face view of a ttmem model: ``TtmemConfig.from_model_config(cfg)`` or ``config.model_config``."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "dim", "num_hidden_layers": "depth", "num_attention_heads": "heads"}

    # An explicit __init__ (rather than dataclass fields) reads the same in transformers 5.2 and later 5.x releases.
    def __init__(
        self, ttmem: dict[str, Any] | None = None, ttmem_format: int = FORMAT_VERSION, use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        if not isinstance(ttmem_format, int) or ttmem_format > FORMAT_VERSION:
            raise ValueError(
                f"config.json has ttmem_format {ttmem_format!r} but this ttmem reads format {FORMAT_VERSION}; "
                "it was written by a newer ttmem: upgrade ttmem to load it"
            )
        model_config = model_config_from_dict(ttmem if ttmem is not None else ModelConfig().to_dict())
        for mirror in ("vocab_size", "dim", "depth", "heads", "tie_word_embeddings", *self.attribute_map):
            kwargs.pop(mirror, None)  # derived from the model config below, never read from the file
        super().__init__(**kwargs)
        self.ttmem, self.ttmem_format, self.use_cache = model_config.to_dict(), ttmem_format, use_cache
        self.vocab_size, self.dim, self.depth, self.heads = (
            model_config.vocab_size, model_config.dim, model_config.depth, model_config.heads
        )
        self.tie_word_embeddings = model_config.tie_embeddings

    @classmethod
    def from_model_config(cls, model_config: ModelConfig, **kwargs: Any) -> TtmemConfig:
        """The Hugging Face config of a ttmem ModelConfig (extra keyword arguments go to PretrainedConfig)."""
        if not isinstance(model_config, ModelConfig):
            raise TypeError(f"model_config must be a ttmem ModelConfig, got {type(model_config).__name__}")
        return cls(ttmem=model_config.to_dict(), **kwargs)

    @property
    def model_config(self) -> ModelConfig:
        """The ttmem ModelConfig this config carries."""
        return ModelConfig.from_dict(self.ttmem)
