"""Hugging Face integration: ttmem models as ``AutoModelForCausalLM``, a byte tokenizer, export of trained runs.

Importing this package registers the ``ttmem`` model type with ``AutoConfig``, ``AutoModelForCausalLM`` and
``AutoTokenizer``, so ``AutoModelForCausalLM.from_pretrained(OUT_DIR)`` works without ``trust_remote_code``.
Exports also carry a two-line ``auto_map`` module that imports this package, so tools that cannot import
ttmem first (the ``lm_eval`` command line) load them with ``trust_remote_code=True``; the code it runs is
the installed ttmem. Needs the optional extra: ``pip install 'ttmem[hf]'``.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("ttmem.hf needs transformers: pip install 'ttmem[hf]'") from err

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ttmem.hf.configuration import MODEL_TYPE, NotTtmemExportError, TtmemConfig
from ttmem.hf.export import export_model, export_run
from ttmem.hf.modeling import TtmemCache, TtmemForCausalLM
from ttmem.hf.tokenization import TtmemByteTokenizer

AutoConfig.register(MODEL_TYPE, TtmemConfig, exist_ok=True)
AutoModelForCausalLM.register(TtmemConfig, TtmemForCausalLM, exist_ok=True)
AutoTokenizer.register(TtmemConfig, tokenizer_class=TtmemByteTokenizer, exist_ok=True)

__all__ = [
    "MODEL_TYPE",
    "NotTtmemExportError",
    "TtmemByteTokenizer",
    "TtmemCache",
    "TtmemConfig",
    "TtmemForCausalLM",
    "export_model",
    "export_run",
]
