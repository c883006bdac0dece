"""Text corpora as token arrays with a deterministic train / validation split.

Design: a corpus is two flat token arrays (uint8 for bytes, int32 otherwise) plus the number of raw
bytes behind the validation tokens, so bits per byte is exact for any tokeniser. Files of a folder
are assigned to a split by a hash of their relative path: the split never changes when files are
added, removed or listed in another order. The embedded default corpus is the Python standard
library's own source, present wherever Python is, so the default run needs no download.

Specs accepted by `load_corpus`: "stdlib", "enwik8", "hf:NAME[:CONFIG]", or a path to a text file
or folder.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttmem.data.enwik8 import fetch_enwik8, split_enwik8
from ttmem.data.tokenizers import Tokenizer, get_tokenizer

_SKIP_PARTS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class Corpus:
    """Token arrays of one corpus. `validation_bytes` = raw bytes the validation tokens encode."""

    name: str
    tokenizer: str
    vocab_size: int
    train: np.ndarray
    validation: np.ndarray
    validation_bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.validation_bytes / max(len(self.validation), 1)


def in_validation(relative_path: str, val_fraction: float) -> bool:
    """Whether a file belongs to the validation split: sha256 of its posix relative path, as a
    number in [0, 1), below `val_fraction`."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def _is_text(path: Path) -> bool:
    with path.open("rb") as handle:
        return b"\x00" not in handle.read(8192)


def list_text_files(root: Path, suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Regular, non-hidden, non-binary files under `root` (sorted by relative path); folders named
    site-packages / dist-packages / __pycache__ and hidden ones are not entered."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_PARTS]
        for name in names:
            path = Path(folder) / name
            if name.startswith(".") or (suffixes is not None and path.suffix not in suffixes):
                continue
            if path.is_file() and _is_text(path):
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(
    root: Path, files: list[Path], val_fraction: float, max_bytes: int | None = None
) -> tuple[bytes, bytes]:
    """Concatenated (train, validation) bytes of `files`, split by `in_validation` of each path
    (reading stops once train has `max_bytes` and validation `max_bytes // 10`). If that leaves a
    side empty (a folder of one or two files), the joined text is split by position instead: the
    last `val_fraction` of it becomes validation."""
    train, val = [], []
    cap = (max_bytes, max(1, max_bytes // 10)) if max_bytes else (float("inf"), float("inf"))
    limits = {id(train): cap[0], id(val): cap[1]}
    sizes = {id(train): 0, id(val): 0}
    for path in files:
        side = val if in_validation(path.relative_to(root).as_posix(), val_fraction) else train
        if sizes[id(side)] >= limits[id(side)]:
            if all(sizes[k] >= limits[k] for k in sizes):
                break
            continue
        side.append(path.read_bytes())
        sizes[id(side)] += len(side[-1]) + 1
    if train and val:
        return b"\n".join(train), b"\n".join(val)
    return split_by_position(b"\n".join(train + val), val_fraction)


def split_by_position(data: bytes, val_fraction: float) -> tuple[bytes, bytes]:
    cut = len(data) - max(1, int(len(data) * val_fraction))
    return data[:cut], data[cut:]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def _from_bytes(name: str, tok: Tokenizer, train: bytes, val: bytes, max_bytes: int | None) -> Corpus:
    if max_bytes:
        train, val = train[:max_bytes], val[: max(max_bytes // 10, 1)]
    if not train or not val:
        raise ValueError(f"dataset '{name}' has no text to train or validate on")
    return Corpus(name, tok.name, tok.vocab_size, tok.encode(train), tok.encode(val), len(val))


def load_stdlib(tokenizer: Tokenizer, val_fraction: float = 0.05, max_bytes: int | None = None) -> Corpus:
    """The standard library's .py sources (site-packages excluded), split by path hash."""
    root = stdlib_root()
    train, val = split_files(root, list_text_files(root, (".py",)), val_fraction, max_bytes)
    return _from_bytes("stdlib", tokenizer, train, val, max_bytes)


def load_path(
    path: str | Path, tokenizer: Tokenizer, val_fraction: float = 0.05, max_bytes: int | None = None
) -> Corpus:
    """A text file (split by position) or a folder of text files (split by path hash)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(f"data path does not exist: {root}")
    if root.is_file():
        data = root.read_bytes()
        if not data.strip():
            raise ValueError(f"data file is empty: {root}")
        if b"\x00" in data[:8192]:  # the same test the folder loader uses to skip binary files
            raise ValueError(f"data file {root} is binary (it contains NUL bytes); pass a text file or folder")
        train, val = split_by_position(data, val_fraction)
    else:
        files = [f for f in list_text_files(root) if f.stat().st_size > 0]
        if not files:
            raise ValueError(f"data folder contains no non-empty text files: {root}")
        train, val = split_files(root, files, val_fraction, max_bytes)
    return _from_bytes(str(root), tokenizer, train, val, max_bytes)


def load_enwik8(
    tokenizer: Tokenizer, cache_dir: str | Path | None = None, max_bytes: int | None = None, **fetch_kwargs
) -> Corpus:
    """enwik8 with its standard 90M / 5M split (downloaded and verified on first use)."""
    parts = split_enwik8(fetch_enwik8(cache_dir, **fetch_kwargs))
    return _from_bytes(
        "enwik8", tokenizer, parts["train"].tobytes(), parts["validation"].tobytes(), max_bytes
    )


def load_hf(
    name: str,
    config: str | None,
    tokenizer: Tokenizer,
    text_field: str = "text",
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
) -> Corpus:
    """A Hugging Face dataset's text column; its "validation" split if it has one."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as err:
        raise ValueError(
            "Hugging Face datasets need the 'datasets' package: pip install 'ttmem[hf]'"
        ) from err
    loaded = datasets.load_dataset(name, config)
    if "train" not in loaded:
        raise ValueError(f"Hugging Face dataset '{name}' has no 'train' split (has {sorted(loaded)})")

    def join(split) -> bytes:
        if text_field not in split.column_names:
            raise ValueError(f"dataset '{name}' has no column '{text_field}' (has {split.column_names})")
        out, total = [], 0
        for text in split[text_field]:
            out.append(text.encode("utf-8"))
            total += len(out[-1]) + 1
            if max_bytes and total >= max_bytes:
                break
        return b"\n".join(out)

    if "validation" in loaded:
        train, val = join(loaded["train"]), join(loaded["validation"])
    else:
        train, val = split_by_position(join(loaded["train"]), val_fraction)
    return _from_bytes(f"hf:{name}", tokenizer, train, val, max_bytes)


def load_corpus(
    spec: str = "stdlib",
    tokenizer: str | Tokenizer = "bytes",
    *,
    val_fraction: float = 0.05,
    max_bytes: int | None = None,
    cache_dir: str | Path | None = None,
) -> Corpus:
    """Corpus from a spec: "stdlib", "enwik8", "hf:NAME[:CONFIG]", or a file / folder path."""
    _check_fraction(val_fraction)
    tok = get_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    if spec == "stdlib":
        return load_stdlib(tok, val_fraction, max_bytes)
    if spec == "enwik8":
        return load_enwik8(tok, cache_dir, max_bytes)
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        return load_hf(name, config or None, tok, val_fraction=val_fraction, max_bytes=max_bytes)
    if "/" in spec or "\\" in spec or Path(spec).exists() or Path(spec).suffix:
        return load_path(spec, tok, val_fraction, max_bytes)
    raise ValueError(
        f"unknown dataset '{spec}': expected 'stdlib', 'enwik8', 'hf:NAME[:CONFIG]', or a path to a text "
        "file or folder"
    )
