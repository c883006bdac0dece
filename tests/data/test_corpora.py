"""Corpora, splits, loaders, tokenisers and batching: properties checked against independent rules."""

from __future__ import annotations

import hashlib
import http.server
import json
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ttmem.data import (
    CorpusWindows,
    DataUnavailableError,
    MixedRows,
    SyntheticTask,
    TaskRows,
    fetch_enwik8,
    get_tokenizer,
    in_validation,
    load_corpus,
    make_batch,
)
from ttmem.data.corpora import list_text_files, stdlib_root


def _write_tree(root: Path, n: int = 30) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        rel = f"pkg{i % 3}/file_{i}.txt"
        data = f"file {i}: ".encode() + bytes([97 + i % 26]) * (50 + i)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    (root / ".hidden").write_bytes(b"never read")
    (root / "blob.bin").write_bytes(b"\x00\x01binary")
    return files


def test_folder_split_follows_path_hash_and_ignores_listing_order(tmp_path):
    files = _write_tree(tmp_path)
    corpus = load_corpus(str(tmp_path), val_fraction=0.3)
    # Independent rule: sha256 of the relative path as a fraction of 2^64.
    val_names = sorted(r for r in files if int(hashlib.sha256(r.encode()).hexdigest()[:16], 16) / 2**64 < 0.3)
    train_names = sorted(set(files) - set(val_names))
    assert val_names and train_names
    assert corpus.validation.tobytes() == b"\n".join(files[r] for r in val_names)
    assert corpus.train.tobytes() == b"\n".join(files[r] for r in train_names)
    assert b"never read" not in corpus.train.tobytes() + corpus.validation.tobytes()
    assert b"binary" not in corpus.train.tobytes() + corpus.validation.tobytes()
    # Adding files never moves an existing file to the other split.
    (tmp_path / "pkg9").mkdir()
    (tmp_path / "pkg9" / "new.txt").write_bytes(b"new text")
    again = load_corpus(str(tmp_path), val_fraction=0.3)
    for rel in val_names:
        assert files[rel] in again.validation.tobytes()
    assert all(in_validation(r, 0.3) for r in val_names)


def test_single_file_is_split_by_position(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes(bytes(range(32, 127)) * 10)
    corpus = load_corpus(str(path), val_fraction=0.1)
    data = path.read_bytes()
    assert corpus.train.tobytes() + corpus.validation.tobytes() == data
    assert len(corpus.validation) == int(len(data) * 0.1)
    assert corpus.bytes_per_token == 1.0


def test_missing_and_empty_data_paths_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "hollow").mkdir()
    with pytest.raises(ValueError, match="no non-empty text files"):
        load_corpus(str(tmp_path / "hollow"))
    with pytest.raises(ValueError, match="unknown dataset 'wikitext'"):
        load_corpus("wikitext")
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus(str(tmp_path / "empty.txt"), val_fraction=1.5)


def test_stdlib_corpus_is_the_standard_library_split_by_path():
    root = stdlib_root()
    files = list_text_files(root, (".py",))
    assert files and not any("site-packages" in f.parts for f in files)
    corpus = load_corpus("stdlib", max_bytes=200_000)
    assert len(corpus.train) == 200_000 and corpus.vocab_size == 256
    first_val = next(f for f in files if in_validation(f.relative_to(root).as_posix(), 0.05))
    first_train = next(f for f in files if not in_validation(f.relative_to(root).as_posix(), 0.05))
    assert corpus.validation.tobytes()[:64] == first_val.read_bytes()[:64]
    assert corpus.train.tobytes()[:64] == first_train.read_bytes()[:64]


def _serve(directory: Path, hits: list[str]):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


def test_enwik8_download_checksum_and_cache(tmp_path):
    payload = (b"<mediawiki> some wikipedia text </mediawiki>\n" * 500)[:20_000]
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "enwik8.zip", "w") as zf:
        zf.writestr("enwik8", payload)
    hits: list[str] = []
    server = _serve(served, hits)
    url = f"http://127.0.0.1:{server.server_address[1]}/enwik8.zip"
    md5 = hashlib.md5(payload).hexdigest()
    try:
        path = fetch_enwik8(tmp_path / "cache", url=url, md5=md5, size=len(payload))
        assert path.read_bytes() == payload and len(hits) == 1
        assert fetch_enwik8(tmp_path / "cache", url=url, md5=md5, size=len(payload)) == path
        assert len(hits) == 1  # served from the cache the second time
        with pytest.raises(DataUnavailableError, match="md5"):
            fetch_enwik8(tmp_path / "cache2", url=url, md5="0" * 32, size=len(payload))
    finally:
        server.shutdown()
        server.server_close()
    from ttmem.data.enwik8 import split_enwik8

    parts = split_enwik8(path)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [18_000, 1_000, 1_000]
    assert b"".join(parts[k].tobytes() for k in ("train", "validation", "test")) == payload


def test_enwik8_offline_is_one_clear_error(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on this port any more
    with pytest.raises(DataUnavailableError, match="could not download enwik8.*offline"):
        fetch_enwik8(tmp_path, url=f"http://127.0.0.1:{port}/enwik8.zip", timeout_s=2)
    assert not list(tmp_path.glob("*.part"))


def test_hf_loader_reads_a_local_dataset_folder(tmp_path):
    for split, texts in (("train", ["alpha beta", "gamma"]), ("validation", ["delta"])):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    corpus = load_corpus(f"hf:{tmp_path}")
    assert corpus.train.tobytes() == b"alpha beta\ngamma"
    assert corpus.validation.tobytes() == b"delta"


def test_hf_loader_without_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"ttmem\[hf\]"):
        load_corpus("hf:wikitext:wikitext-2-raw-v1")


def test_tokenizers_bytes_roundtrip_and_optional_backends(monkeypatch):
    tok = get_tokenizer("bytes")
    text = "déjà vu — ✓"
    assert tok.encode(text).tolist() == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ValueError, match="tiktoken"):
        get_tokenizer("tiktoken:gpt2")
    with pytest.raises(ValueError, match="sentencepiece"):
        get_tokenizer("sentencepiece:m.model")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("wordpiece")


def test_batches_are_a_function_of_seed_step_and_row():
    tokens = np.arange(10_000, dtype=np.int64)  # distinct tokens: a window's first token is its offset
    source = CorpusWindows(tokens, 16, seed=3)
    full = make_batch(source, 5, range(8))
    halves = [make_batch(source, 5, range(0, 4)), make_batch(source, 5, range(4, 8))]
    assert torch.equal(full.input_ids, torch.cat([h.input_ids for h in halves]))
    assert torch.equal(make_batch(source, 5, range(8)).input_ids, full.input_ids)
    assert not torch.equal(make_batch(source, 6, range(8)).input_ids, full.input_ids)
    for row_in, row_tgt in zip(full.input_ids, full.targets, strict=True):
        start = int(row_in[0])
        assert row_in.tolist() == tokens[start : start + 16].tolist()
        assert row_tgt.tolist() == tokens[start + 1 : start + 17].tolist()
    starts = [int(make_batch(source, s, [0]).input_ids[0, 0]) for s in range(300)]
    assert min(starts) < 1000 and max(starts) > 9000  # offsets cover the whole corpus


def test_mixed_rows_take_the_requested_share():
    tokens = np.full(5_000, 7, dtype=np.int64)
    task = SyntheticTask("copy", 32, 256)
    mixed = MixedRows(CorpusWindows(tokens, 32), TaskRows(task), aux_fraction=0.25)
    batch = make_batch(mixed, 0, range(400))
    from_task = (batch.input_ids != 7).any(dim=1).float().mean().item()
    assert abs(from_task - 0.25) < 0.07  # binomial(400, 0.25): sd 0.022
    with pytest.raises(ValueError, match="aux_fraction"):
        MixedRows(CorpusWindows(tokens, 32), TaskRows(task), aux_fraction=2.0)
