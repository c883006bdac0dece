"""Corpora, tokenisers, synthetic long-context tasks and stateless batching.

`load_corpus("stdlib")` is the embedded default (no download). Batches are a pure function of
(seed, step, row), see `ttmem.data.batches`.
"""

from ttmem.data.batches import IGNORE, Batch, CorpusWindows, MixedRows, TaskRows, make_batch, row_rng
from ttmem.data.corpora import Corpus, in_validation, load_corpus
from ttmem.data.enwik8 import ENWIK8_MD5, ENWIK8_URL, fetch_enwik8
from ttmem.data.errors import DataUnavailableError
from ttmem.data.synthetic import (
    NEEDLE_DEPTHS,
    TASKS,
    NeedleExample,
    SyntheticTask,
    copy_example,
    key_needle_example,
    mqar_example,
    needle_example,
)
from ttmem.data.tokenizers import ByteTokenizer, Tokenizer, get_tokenizer

__all__ = [
    "IGNORE",
    "Batch",
    "CorpusWindows",
    "MixedRows",
    "TaskRows",
    "make_batch",
    "row_rng",
    "Corpus",
    "in_validation",
    "load_corpus",
    "ENWIK8_MD5",
    "ENWIK8_URL",
    "fetch_enwik8",
    "DataUnavailableError",
    "NEEDLE_DEPTHS",
    "TASKS",
    "NeedleExample",
    "SyntheticTask",
    "copy_example",
    "key_needle_example",
    "mqar_example",
    "needle_example",
    "ByteTokenizer",
    "Tokenizer",
    "get_tokenizer",
]
