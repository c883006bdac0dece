"""Evaluation: bits per byte against closed forms, recall scoring against oracle models, lm-eval adapter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ttmem.data import ByteTokenizer, SyntheticTask
from ttmem.eval import evaluate_lm, lm_nll_sums
from ttmem.eval.generation import filter_logits, sample
from ttmem.eval.lm_eval_adapter import HarnessAdapter, lm_eval_model
from ttmem.eval.recall import answer_accuracy, mqar_accuracy, needle_grid, save_heatmap, task_accuracy
from ttmem.eval.speed import measure_throughput


class Unigram(nn.Module):
    """Same logits at every position."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*ids.shape, -1)


class Bigram(nn.Module):
    """logits[t] = table[ids[t]]: the next token depends on the current one only."""

    def __init__(self, vocab: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.table = nn.Parameter(
            torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 3
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]


class Induction(nn.Module):
    """Oracle for in-context recall: predicts the token that followed the latest earlier occurrence of
    the last `span` tokens (an explicit induction head), else token 0."""

    def __init__(self, span: int) -> None:
        super().__init__()
        self.span, self.dummy = span, nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, 256)
        for b, row in enumerate(ids.tolist()):
            data = bytes(row)
            for t in range(len(row)):
                key = data[max(0, t + 1 - self.span) : t + 1]
                prev = data[:t].rfind(key) if len(key) == self.span else -1
                logits[b, t, data[prev + self.span] if prev >= 0 else 0] = 1.0
        return logits


class KeyValueOracle(nn.Module):
    """Oracle for MQAR: at a key seen in the key-value block, predict its value."""

    def __init__(self, pairs: int) -> None:
        super().__init__()
        self.pairs, self.dummy = pairs, nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, 256)
        for b, row in enumerate(ids.tolist()):
            table = dict(zip(row[0 : 2 * self.pairs : 2], row[1 : 2 * self.pairs : 2], strict=True))
            for t, token in enumerate(row):
                logits[b, t, table.get(token, 0)] = 1.0
        return logits


class CopyOracle(nn.Module):
    """Oracle for copying: from the separator on, predict the token as far back as the copy started."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, 256)
        for b, row in enumerate(ids.tolist()):
            sep, pad = row.index(1), next(i for i, x in enumerate(row) if x != 0)
            for t in range(sep, len(row)):
                logits[b, t, row[pad + t - sep]] = 1.0
        return logits


def test_bits_per_byte_matches_closed_forms():
    tokens = np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint8)
    uniform = evaluate_lm(Unigram(torch.zeros(256)), tokens, seq_len=64, batch_size=4)
    assert math.isclose(uniform["bpb"], 8.0, rel_tol=1e-6) and math.isclose(uniform["ppl"], 256, rel_tol=1e-5)
    logits = torch.randn(256, generator=torch.Generator().manual_seed(1))
    result = evaluate_lm(Unigram(logits), tokens, seq_len=64, batch_size=3, max_tokens=1000)
    predicted = tokens[1 : 1 + (1000 // 64) * 64]  # 15 whole windows, each token predicted once
    logp = torch.log_softmax(logits.double(), -1).numpy()
    assert result["tokens"] == len(predicted)
    assert math.isclose(result["bpb"], -logp[predicted].mean() / math.log(2), rel_tol=1e-6)
    # Two processes' shares add up to the whole.
    model = Bigram()
    whole = lm_nll_sums(model, tokens, 50)
    parts = [lm_nll_sums(model, tokens, 50, rank=r, world=2) for r in range(2)]
    assert math.isclose(sum(p[0] for p in parts), whole[0], rel_tol=1e-6)  # float32 sums
    assert sum(p[1] for p in parts) == whole[1]
    assert math.isclose(
        evaluate_lm(model, tokens, 50, bytes_per_token=2.0)["bpb"] * 2,
        evaluate_lm(model, tokens, 50)["bpb"],
        rel_tol=1e-9,
    )
    with pytest.raises(ValueError, match="at least seq_len"):
        evaluate_lm(model, tokens[:10], 64)


def test_recall_scoring_counts_exact_answers():
    inputs = np.zeros((4, 6), dtype=np.int64)
    targets = np.full((4, 6), -100, dtype=np.int64)
    targets[:, 3:] = [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3]]
    logits = torch.full((4, 6, 8), -5.0)
    for b, row in enumerate([[1, 2, 3], [1, 2, 3], [1, 0, 3], [0, 0, 0]]):  # 2 of 4 fully right
        logits[b, torch.arange(3, 6), torch.tensor(row)] = 5.0

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, ids):
            return logits

    exact, token = answer_accuracy(Fixed(), inputs, targets)
    assert exact == 0.5 and math.isclose(token, 8 / 12)


def test_needle_grid_with_an_induction_oracle_and_heatmap(tmp_path):
    depths = [0.0, 0.5, 1.0]
    assert (needle_grid(Induction(span=16), [128, 256], depths, samples=2) == 1.0).all()
    blind = needle_grid(Unigram(torch.zeros(256)), [128, 256], depths, samples=2)
    assert blind.shape == (3, 2) and (blind == 0.0).all()
    png = save_heatmap(np.array([[1.0, 0.5], [0.0, 1.0], [0.2, 0.3]]), [128, 256], depths, tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mqar_and_copy_accuracy_with_oracles():
    assert mqar_accuracy(KeyValueOracle(8), 64, 8, samples=8) == 1.0
    assert mqar_accuracy(Unigram(torch.zeros(256)), 64, 8, samples=8) < 0.05
    copy = SyntheticTask("copy", 63, 256)
    assert task_accuracy(CopyOracle(), copy, samples=4) == {"exact": 1.0, "token": 1.0}
    # An induction head cannot know the first copied token (nothing before it repeats yet).
    induction = task_accuracy(Induction(span=1), copy, samples=4)
    assert induction["exact"] == 0.0 and 0.8 < induction["token"] < 1.0  # repeated bytes mislead it too


def test_harness_adapter_scores_against_a_bigram_reference():
    model = Bigram(seed=3)
    logp = torch.log_softmax(model.table.detach().double(), -1)
    adapter = HarnessAdapter(model, "bytes", max_length=7)
    text = "the quick brown fox jumps over it"
    tokens = list(text.encode())
    expected = sum(float(logp[p, t]) for p, t in zip([10, *tokens[:-1]], tokens, strict=True))
    assert math.isclose(adapter.loglikelihood_rolling([(text,)])[0], expected, rel_tol=1e-5)
    ((ll, greedy),) = adapter.loglikelihood([("the qu", "ick")])
    ctx, cont = list(b"the qu"), list(b"ick")
    prev = [ctx[-1], *cont[:-1]]
    assert math.isclose(ll, sum(float(logp[p, t]) for p, t in zip(prev, cont, strict=True)), rel_tol=1e-5)
    assert greedy == all(int(logp[p].argmax()) == t for p, t in zip(prev, cont, strict=True))
    chain, token = [], ord("a")
    for _ in range(12):
        token = int(logp[token].argmax())
        chain.append(token)
    full = bytes(chain).decode("utf-8", errors="replace")
    (out,) = adapter.generate_until([("a", {"until": [], "max_gen_toks": 12})])
    assert out == full
    stop = full[3:5]
    (cut,) = adapter.generate_until([("a", {"until": [stop], "max_gen_toks": 12})])
    assert cut == full[: full.index(stop)]


def test_lm_eval_harness_runs_the_adapter_on_a_local_task(tmp_path):
    import json

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = [{"question": f"q{i}:", "choices": [" aaaa", " zzzz"], "answer": int(i == 3)} for i in range(4)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tiny.yaml").write_text(
        "task: ttmem_tiny_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"
    )
    logits = torch.full((256,), -4.0)
    logits[ord("a")] = 4.0  # prefers "a": right on docs 0-2, wrong on doc 3
    results = simple_evaluate(
        model=lm_eval_model(Unigram(logits)),
        tasks=["ttmem_tiny_choice"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
    )
    assert math.isclose(results["results"]["ttmem_tiny_choice"]["acc,none"], 0.75)


def test_sampling_greedy_chain_and_filters():
    model = Bigram(seed=5)
    out = sample(model, torch.tensor([[65]]), 5, temperature=0.0)
    expected = [65]
    for _ in range(5):
        expected.append(int(model.table[expected[-1]].argmax()))
    assert out[0].tolist() == expected
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    probs = torch.softmax(logits, -1)[0]  # 0.644, 0.237, 0.087, 0.032
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]] and probs[0] < 0.7 < probs[:2].sum()
    torch.manual_seed(0)
    drawn = sample(model, torch.tensor([[65]]), 50, temperature=1.0, top_k=1)
    assert drawn.tolist() == sample(model, torch.tensor([[65]]), 50, temperature=0.0).tolist()


def test_throughput_measurement_reports_positive_rates():
    stats = measure_throughput(Bigram(), batch_size=2, seq_len=16, iters=2, warmup=1)
    assert stats["train_tokens_per_s"] > 0 and stats["infer_tokens_per_s"] > 0
    with pytest.raises(ValueError):
        measure_throughput(Bigram(), iters=0)


def test_lm_eval_model_without_the_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)
    with pytest.raises(ValueError, match=r"ttmem\[lm-eval\]"):
        lm_eval_model(Bigram())
    assert ByteTokenizer().vocab_size == 256
