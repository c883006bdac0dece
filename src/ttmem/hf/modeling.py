"""``TtmemForCausalLM``: every ttmem architecture as a Hugging Face causal LM, decoding from its streaming state.

Design choices:
- One wrapper class for all architectures: it holds a ``ttmem.models.LanguageModel`` under ``model``, so the
  weights keep ttmem's names (``model.embed.weight``, ``model.layers.0...``) and the forward pass is
  ttmem's own, bit for bit.
- ``TtmemCache`` is a ``transformers.Cache`` that holds ttmem's ``ModelState`` (KV caches, memory states,
  fast weights, position). ``generate()`` reads the prompt once, then feeds one token per step on that
  state, exactly as ``LanguageModel.generate`` does. The state is updated in place, as Hugging Face caches
  are. Operations a streaming memory cannot undo or reorder (beam search's reordering, cropping for
  assisted decoding, batch re-indexing) raise a ValueError that names the supported decoding modes.
- ttmem models read every token into their memory, so padding cannot be skipped: an attention mask must
  be all ones, or ones followed by trailing zeros (right padding, harmless in a causal model when no
  state is carried across calls); anything else is refused rather than silently mis-scored.
- ``from_pretrained`` checks the directory first (a ttmem export, a weight file, a matching tokenizer
  vocabulary) and refuses missing or unexpected tensors instead of initialising them at random. Non-persistent
  buffers (the rotary ``inv_freq``) are not stored in checkpoints; ``_init_weights`` recomputes them after
  loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ttmem.hf.auto_module import MODEL_AUTO_MAP, keep_auto_map, write_auto_module
from ttmem.hf.checks import check_export_dir
from ttmem.hf.configuration import TtmemConfig
from ttmem.layers.attention import RotaryEmbedding
from ttmem.models.language_model import LanguageModel, ModelState

# Name of the cache field in model outputs and forward arguments: "cache" in recent transformers releases,
# "past_key_values" before the rename.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
_UNSUPPORTED_STATE_OP = (
    "ttmem's streaming memory state cannot be {what}; use greedy decoding or sampling "
    "(num_beams=1, no assistant model)"
)


class TtmemCache(Cache):
    """A ttmem ``ModelState`` in the shape of a Hugging Face ``Cache`` (see the module docstring)."""

    def __init__(self, state: ModelState | None = None) -> None:
        super().__init__(layers=[])
        self.state = state

    def __bool__(self) -> bool:
        return True  # a Cache's len() counts Hugging Face layer objects, of which this one has none

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.state is None else self.state.position

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no maximum: memory states are fixed-size, KV caches grow as needed

    @property
    def is_linear(self) -> list[bool]:
        return [False]  # the state counts its tokens, so generate() may slice inputs by get_seq_length()

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def batch_size(self) -> int:
        return -1

    def reset(self) -> None:
        self.state = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise ValueError(_UNSUPPORTED_STATE_OP.format(what="reordered (beam search)"))

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(_UNSUPPORTED_STATE_OP.format(what="cropped (assisted or speculative decoding)"))

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise ValueError(_UNSUPPORTED_STATE_OP.format(what="repeated along the batch"))

    def batch_select_indices(self, indices: Tensor) -> None:
        raise ValueError(_UNSUPPORTED_STATE_OP.format(what="re-indexed along the batch"))


def _check_attention_mask(attention_mask: Tensor | None, input_ids: Tensor) -> None:
    if attention_mask is None:
        return
    if attention_mask.dim() != 2 or attention_mask.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"attention_mask must be [batch, length] with batch {input_ids.shape[0]}, got {tuple(attention_mask.shape)}"
        )
    keep = attention_mask.bool()
    # Right padding only: once a row has a zero, no later position may be one.
    if bool((keep[:, 1:] & ~keep[:, :-1]).any()):
        raise ValueError(
            "attention_mask has padding before real tokens; ttmem models read every token into their memory and "
            "cannot skip padding: pass prompts one at a time (or of equal length), or pad on the right"
        )


@keep_auto_map
class TtmemPreTrainedModel(PreTrainedModel):
    """Hugging Face plumbing shared by ttmem models."""

    config_class = TtmemConfig
    config: TtmemConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    _no_split_modules = ["PreNormResidual"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module: torch.nn.Module) -> None:
        # ttmem modules initialise themselves; only buffers that checkpoints do not store need recomputing.
        if isinstance(module, RotaryEmbedding):
            with torch.device("cpu"):
                fresh = RotaryEmbedding(2 * module.inv_freq.shape[0], self.config.model_config.rotary_base)
            with torch.no_grad():
                module.inv_freq.copy_(fresh.inv_freq.to(module.inv_freq.device))

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model creates its own TtmemCache on the first forward


class TtmemForCausalLM(TtmemPreTrainedModel, GenerationMixin):
    """Any ttmem architecture as ``AutoModelForCausalLM``; ``.model`` is the ttmem ``LanguageModel``."""

    _tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}

    def __init__(self, config: TtmemConfig) -> None:
        super().__init__(config)
        self.model = LanguageModel(config.model_config)
        self.post_init()

    @classmethod
    def from_ttmem(cls, model: LanguageModel) -> TtmemForCausalLM:
        """Wrap a ttmem LanguageModel (its parameters are shared, not copied)."""
        if not isinstance(model, LanguageModel):
            raise TypeError(f"model must be a ttmem LanguageModel, got {type(model).__name__}")
        with torch.device("meta"):
            wrapper = cls(TtmemConfig.from_model_config(model.config))
        wrapper.model = model
        return wrapper

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        self.model.lm_head = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """input_ids [B, T] -> logits [B, T, vocab]; ``cache`` (a TtmemCache) continues an earlier call."""
        cache = kwargs.pop("cache", None)
        legacy = kwargs.pop("past_key_values", None)
        cache = legacy if cache is None else cache
        kwargs.pop("position_ids", None)  # positions come from the streaming state
        if inputs_embeds is not None:
            raise ValueError("ttmem models take input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("input_ids is required")
        if cache is not None and not isinstance(cache, TtmemCache):
            raise ValueError(f"cache must be a TtmemCache returned by this model, got {type(cache).__name__}")
        _check_attention_mask(attention_mask, input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        out = self.model(input_ids, cache.state if cache is not None else None)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=out.logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        if use_cache:
            cache = cache if cache is not None else TtmemCache()
            cache.state = out.state
        else:
            cache = None
        output = CausalLMOutputWithPast(loss=loss, logits=out.logits, **{CACHE_FIELD: cache})
        return output if return_dict is not False else output.to_tuple()

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Hugging Face ``save_pretrained`` plus ``ttmem_auto.py`` and the ``auto_map`` that names it."""
        write_auto_module(save_directory)
        self.config.auto_map = dict(MODEL_AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Hugging Face ``from_pretrained`` that refuses what is not a complete ttmem export (see module docstring)."""
        if Path(pretrained_model_name_or_path).is_dir():
            check_export_dir(pretrained_model_name_or_path)
        with_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = {
            name: sorted(info.get(key) or [])
            for name, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"),
                              ("mismatched", "mismatched_keys"))
        }
        if any(problems.values()):
            detail = "; ".join(f"{name} {', '.join(map(str, keys))}" for name, keys in problems.items() if keys)
            raise ValueError(
                f"{pretrained_model_name_or_path}: the weight file does not match the ttmem "
                f"{model.config.model_config.arch!r} model: {detail}"
            )
        return (model, info) if with_info else model
