"""Export a trained ttmem model (run folder, checkpoint or ``save_model`` directory) as a Hugging Face directory.

The directory holds ``config.json`` (``TtmemConfig``), ``model.safetensors``, ``generation_config.json``, the
byte tokenizer's ``tokenizer_config.json`` and ``ttmem_auto.py`` (see ``ttmem.hf.auto_module``).

Only byte-level runs export: a run trained with a tiktoken or sentencepiece tokenizer is refused with one
message, as is a model whose vocabulary is not the byte tokenizer's 256 ids.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ttmem.hf.checks import BYTE_VOCAB_SIZE, CONFIG_FILE, read_export_config
from ttmem.hf.configuration import NotTtmemExportError
from ttmem.models.checkpoint import WEIGHTS_FILE
from ttmem.models.language_model import LanguageModel


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        try:
            read_export_config(out_dir)
        except NotTtmemExportError:
            raise ValueError(f"output directory {out_dir} is not empty and is not an earlier ttmem export") from None


def export_model(model: nn.Module, out_dir: str | Path, tokenizer: str = "bytes") -> Path:
    """Write ``model`` (a ttmem LanguageModel) and the byte tokenizer as a Hugging Face directory; returns it."""
    from ttmem.hf.modeling import TtmemForCausalLM
    from ttmem.hf.tokenization import TtmemByteTokenizer

    if not isinstance(model, LanguageModel):
        raise ValueError(
            f"only ttmem.models architectures can be exported, got a {type(model).__name__} "
            "(a custom model factory); save it with its own code"
        )
    if tokenizer != "bytes":
        raise ValueError(
            f"only byte-tokenizer models can be exported; this model was trained with tokenizer {tokenizer!r}"
        )
    if model.config.vocab_size != BYTE_VOCAB_SIZE:
        raise ValueError(
            f"mismatched tokenizer vocabulary: the byte tokenizer has {BYTE_VOCAB_SIZE} ids but the model's "
            f"vocab_size is {model.config.vocab_size}"
        )
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    wrapper = TtmemForCausalLM.from_ttmem(model)
    wrapper.save_pretrained(out_dir)
    TtmemByteTokenizer().save_pretrained(out_dir)
    return out_dir


def export_run(source: str | Path, out_dir: str | Path) -> Path:
    """Export a run folder (its newest checkpoint), a checkpoint (directory, or an earlier version's file), or a
    ``save_model`` directory."""
    from ttmem.eval.pipeline import load_trained

    source = Path(source)
    if source.is_dir() and (source / WEIGHTS_FILE).is_file() and (source / CONFIG_FILE).is_file():
        try:
            read_export_config(source)
        except NotTtmemExportError:
            pass
        else:
            raise ValueError(f"{source} is already a Hugging Face export; load it with AutoModelForCausalLM")
    model, payload = load_trained(source)
    tokenizer = payload.get("train_config", {}).get("tokenizer", "bytes")
    return export_model(model.eval(), out_dir, tokenizer)
