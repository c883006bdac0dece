"""``TtmemByteTokenizer``: the byte vocabulary of ttmem models as a Hugging Face ``PreTrainedTokenizer``.

Design choices:
- Ids 0-255 are the UTF-8 bytes, exactly as ``ttmem.data.ByteTokenizer`` encodes text; there are no extra
  ids, so ``len(tokenizer) == 256 ==`` the model's vocabulary and every id the model emits decodes.
- The byte models were trained on raw text without special tokens, so the specials alias bytes:
  ``bos_token`` is the newline byte (id 10), the token ttmem's own scoring puts before the first
  token of a text (``HarnessAdapter.prefix_token``), which makes lm-eval's rolling log-likelihood match;
  ``eos_token`` and ``pad_token`` are the NUL byte (id 0), which text does not contain, so padding
  and lm-eval's end-of-text stop sequence never cut real output. No special token is ever added to
  an encoding.
- Decoding returns the bytes as text (invalid UTF-8 becomes U+FFFD, as in ttmem);
  ``skip_special_tokens`` drops only the NUL pad/eos byte, never newlines, which are text first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AddedToken, PreTrainedTokenizer

from ttmem.hf.auto_module import TOKENIZER_AUTO_MAP, keep_auto_map, write_auto_module
from ttmem.hf.checks import BYTE_VOCAB_SIZE, check_tokenizer_dir

BOS_ID = 10  # newline
EOS_ID = PAD_ID = 0  # NUL


def _special(token_id: int) -> AddedToken:
    return AddedToken(chr(token_id), lstrip=False, rstrip=False, normalized=False, special=True)


@keep_auto_map
class TtmemByteTokenizer(PreTrainedTokenizer):
    """UTF-8 bytes as token ids 0-255 (see the module docstring for the special tokens)."""

    model_input_names = ["input_ids", "attention_mask"]
    vocab_files_names: dict[str, str] = {}

    def __init__(self, **kwargs: Any) -> None:
        for name, token_id in (("bos_token", BOS_ID), ("eos_token", EOS_ID), ("pad_token", PAD_ID)):
            kwargs.setdefault(name, _special(token_id))
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Hugging Face ``from_pretrained``, refusing a directory whose ttmem model has another vocabulary."""
        if Path(pretrained_model_name_or_path).is_dir():
            check_tokenizer_dir(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): i for i in range(BYTE_VOCAB_SIZE)}

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [chr(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if len(token) != 1 or ord(token) >= BYTE_VOCAB_SIZE:
            raise ValueError(f"token {token!r} is not a byte token (one character with code point < 256)")
        return ord(token)

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < BYTE_VOCAB_SIZE:
            raise ValueError(f"token id must lie in [0, {BYTE_VOCAB_SIZE}), got {index}")
        return chr(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return bytes(ord(t) for t in tokens).decode("utf-8", errors="replace")

    def _decode(self, token_ids: int | list[int], skip_special_tokens: bool = False, **kwargs: Any) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if skip_special_tokens:
            ids = [i for i in ids if i != self.pad_token_id]
        return self.convert_tokens_to_string([self._convert_id_to_token(i) for i in ids])

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> tuple[str, ...]:
        """Hugging Face ``save_pretrained`` plus ``ttmem_auto.py`` and the ``auto_map`` that names it."""
        write_auto_module(save_directory)
        self._auto_map = dict(TOKENIZER_AUTO_MAP)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is the 256 bytes; nothing to write
