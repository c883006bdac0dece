"""Tokenisers: raw bytes by default, tiktoken and sentencepiece as optional extras.

Design: every tokeniser exposes the same four members (`name`, `vocab_size`, `encode`, `decode`)
so corpora, synthetic tasks and evaluation never care which one is in use. The optional
backends are imported only when asked for, and a missing package is reported as a ValueError
that names the extra to install. Bytes need no vocabulary file and make bits per byte exact.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str | bytes) -> np.ndarray: ...

    def decode(self, ids: list[int] | np.ndarray) -> str: ...


def _optional_import(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"the '{module}' package is needed for this tokenizer; install it with "
            f"`pip install 'ttmem[{extra}]'` or `pip install {module}`"
        ) from err


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, lossless, one token per byte."""

    name = "bytes"
    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return bytes(int(i) & 0xFF for i in ids).decode("utf-8", errors="replace")


class TiktokenTokenizer:
    """A tiktoken encoding by name (e.g. "gpt2", "cl100k_base")."""

    def __init__(self, encoding: str = "gpt2") -> None:
        tiktoken = _optional_import("tiktoken", "tokenizers")
        self._enc = tiktoken.get_encoding(encoding)
        self.name = f"tiktoken:{encoding}"
        self.vocab_size = int(self._enc.n_vocab)

    def encode(self, text: str | bytes) -> np.ndarray:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return np.asarray(self._enc.encode_ordinary(text), dtype=np.int32)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self._enc.decode([int(i) for i in ids])


class SentencePieceTokenizer:
    """A trained sentencepiece model file (.model)."""

    def __init__(self, model_file: str) -> None:
        spm = _optional_import("sentencepiece", "tokenizers")
        if not Path(model_file).is_file():
            raise ValueError(f"sentencepiece model file not found: {model_file}")
        self._sp = spm.SentencePieceProcessor(model_file=model_file)
        self.name = f"sentencepiece:{model_file}"
        self.vocab_size = int(self._sp.get_piece_size())

    def encode(self, text: str | bytes) -> np.ndarray:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def decode(self, ids: list[int] | np.ndarray) -> str:
        return self._sp.decode([int(i) for i in ids])


def get_tokenizer(spec: str = "bytes") -> Tokenizer:
    """Tokenizer from a spec: "bytes", "tiktoken[:ENCODING]" or "sentencepiece:MODEL_FILE"."""
    if not isinstance(spec, str):
        raise TypeError(f"tokenizer must be a string spec, got {type(spec).__name__}")
    kind, _, arg = spec.partition(":")
    if kind == "bytes" and not arg:
        return ByteTokenizer()
    if kind == "tiktoken":
        return TiktokenTokenizer(arg or "gpt2")
    if kind == "sentencepiece" and arg:
        return SentencePieceTokenizer(arg)
    raise ValueError(
        f"unknown tokenizer '{spec}': expected 'bytes', 'tiktoken[:ENCODING]' or 'sentencepiece:MODEL_FILE'"
    )
