"""Checks that turn a wrong directory into one clear message before Hugging Face code reads it.

Each check names the directory and what is wrong: not a ttmem export (with the command that makes one),
a missing weight file, or a tokenizer whose vocabulary is not the model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ttmem.hf.configuration import MODEL_TYPE, NotTtmemExportError

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
BYTE_TOKENIZER_CLASS = "TtmemByteTokenizer"
BYTE_VOCAB_SIZE = 256


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise NotTtmemExportError(f"{path} is not readable JSON ({type(err).__name__}); not a ttmem export") from None
    if not isinstance(data, dict):
        raise NotTtmemExportError(f"{path} does not hold a JSON object; not a ttmem export")
    return data


def read_export_config(directory: str | Path) -> dict[str, Any]:
    """The config.json of a ttmem export, or NotTtmemExportError saying what the directory is instead."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise NotTtmemExportError(
            f"{directory} is not a ttmem Hugging Face export: it has no {CONFIG_FILE} "
            "(make one with `ttmem export RUN_DIR OUT_DIR`)"
        )
    data = _read_json(path)
    if data.get("model_type") != MODEL_TYPE:
        if "arch" in data and "model_type" not in data:
            raise NotTtmemExportError(
                f"{directory} is a ttmem checkpoint in ttmem's own format, not a Hugging Face export; "
                f"convert it with `ttmem export {directory} OUT_DIR`"
            )
        raise NotTtmemExportError(
            f"{directory} is not a ttmem export: its {CONFIG_FILE} has model_type {data.get('model_type')!r}, "
            f"expected {MODEL_TYPE!r}"
        )
    return data


def check_vocabulary(directory: str | Path, model_vocab_size: int) -> None:
    """Raise if the directory's tokenizer is the byte tokenizer but the model's vocabulary is not 256 ids."""
    path = Path(directory) / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return
    tokenizer_class = _read_json(path).get("tokenizer_class")
    if tokenizer_class == BYTE_TOKENIZER_CLASS and model_vocab_size != BYTE_VOCAB_SIZE:
        raise ValueError(
            f"{directory}: mismatched tokenizer vocabulary: the byte tokenizer has {BYTE_VOCAB_SIZE} ids but the "
            f"model's vocab_size is {model_vocab_size}"
        )


def _model_vocab_size(data: dict[str, Any]) -> Any:
    fields = data.get("ttmem")
    return fields.get("vocab_size") if isinstance(fields, dict) else data.get("vocab_size")


def check_export_dir(directory: str | Path) -> None:
    """A ttmem export with its weight file and a tokenizer (if any) that matches the model's vocabulary."""
    directory = Path(directory)
    data = read_export_config(directory)
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"{directory} has no {WEIGHT_FILES[0]}: the weight file of this export is missing")
    vocab_size = _model_vocab_size(data)
    if isinstance(vocab_size, int):
        check_vocabulary(directory, vocab_size)


def check_tokenizer_dir(directory: str | Path) -> None:
    """Raise if the byte tokenizer in ``directory`` sits next to a ttmem model with another vocabulary."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return
    data = _read_json(path)
    vocab_size = _model_vocab_size(data)
    if data.get("model_type") == MODEL_TYPE and isinstance(vocab_size, int):
        check_vocabulary(directory, vocab_size)
