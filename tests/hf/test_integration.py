"""Hugging Face integration: export, AutoModelForCausalLM round trip, generate() on the streaming state, the byte
tokenizer, pipelines, lm-eval's `hf` backend, and one clear error per bad input. All offline on tiny models."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.test_cli import run as run_cli

pytest.importorskip("transformers", reason="the Hugging Face integration needs the extra: pip install 'ttmem[hf]'")

from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

import ttmem.hf  # noqa: E402
from ttmem.data import ByteTokenizer  # noqa: E402
from ttmem.eval.lm_eval_adapter import HarnessAdapter  # noqa: E402
from ttmem.eval.pipeline import load_trained  # noqa: E402
from ttmem.hf import (  # noqa: E402
    NotTtmemExportError,
    TtmemByteTokenizer,
    TtmemCache,
    TtmemConfig,
    TtmemForCausalLM,
    export_model,
)
from ttmem.hf.modeling import CACHE_FIELD  # noqa: E402
from ttmem.models import ARCHITECTURES, ModelConfig, build_model, save_model  # noqa: E402
from ttmem.train import Trainer, resolve_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(autouse=True, scope="module")
def offline():
    """No test here may reach the Hugging Face Hub: everything loads from local directories."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE.items():
            patch.setenv(key, value)
        yield


def small(arch: str, seed: int = 0, **overrides):
    """A tiny model of `arch` (width 32, two blocks) whose segments, windows and chunks are shorter than the prompts."""
    torch.manual_seed(seed)
    fields = dict(dim=32, depth=2, heads=2, window=8, segment_len=8, chunk_size=4, cms_periods=(2, 4))
    return build_model(f"{arch}-tiny", **{**fields, **overrides}).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(ttmem model, export directory) of a small MAC model: rotary attention, memory, persistent tokens."""
    model = small("mac", seed=1)
    return model, export_model(model, tmp_path_factory.mktemp("hf") / "mac")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    corpus = folder / "corpus.txt"
    corpus.write_text("".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n" for i in range(200)))
    settings = [
        "model=gated_deltanet-tiny", "model_args.dim=32", "model_args.depth=2", "model_args.heads=2",
        "model_args.chunk_size=4", f"data={corpus}", f"out_dir={folder / 'run'}", "baseline=none", "report=false",
        "aux_task=", "seq_len=32", "batch_size=4", "steps=3", "warmup_steps=1", "eval_every=3", "eval_tokens=256",
        "log_every=1", "device=cpu",
    ]
    Trainer(resolve_config(None, settings)).fit()
    return folder / "run"


# -- round trip ----------------------------------------------------------------------------------------------------


def test_trained_run_exports_and_loads_with_identical_logits(trained_run, tmp_path, capsys):
    out = tmp_path / "export"
    code, stdout, stderr = run_cli(["export", str(trained_run), str(out)], capsys)
    assert code == 0, stderr
    assert str(out) in stdout
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    original, _ = load_trained(trained_run)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(loaded, TtmemForCausalLM) and loaded.config.model_config == original.config
    fresh = build_model(original.config)  # the run really trained: its weights are not an initialisation
    assert not torch.equal(fresh.embed.weight, original.embed.weight)
    ids = torch.randint(0, 256, (2, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, original(ids).logits)
    checkpoint = sorted((trained_run / "checkpoints").glob("step-*"))[-1]
    code, _, stderr = run_cli(["export", str(checkpoint), str(out)], capsys)  # a checkpoint, over an export
    assert code == 0, stderr


def test_save_model_directory_exports_too(tmp_path, capsys):
    model = small("gated_deltanet")
    save_model(model, tmp_path / "native")
    code, _, stderr = run_cli(["export", str(tmp_path / "native"), str(tmp_path / "out")], capsys)
    assert code == 0, stderr
    ids = torch.randint(0, 256, (1, 17))
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits, model(ids).logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_round_trips_and_greedy_generate_equals_ttmem(arch, tmp_path):
    model = small(arch)
    loaded = AutoModelForCausalLM.from_pretrained(export_model(model, tmp_path / arch))
    prompt = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(prompt).logits, model(prompt).logits)
    expected = model.generate(prompt, 13, temperature=0)
    assert torch.equal(loaded.generate(prompt, max_new_tokens=13, do_sample=False), expected)


def test_config_carries_the_model_config_losslessly(tmp_path):
    config = ModelConfig(arch="hope", dim=48, heads=3, mlp_ratio=8 / 3, cms_periods=(3, 7), memory_rule="delta",
                         tie_embeddings=False, rotary_base=5e5, dim_head=16, norm_eps=1e-6)
    TtmemConfig.from_model_config(config).save_pretrained(tmp_path)
    loaded = TtmemConfig.from_pretrained(tmp_path)
    assert loaded.model_config == config
    assert (loaded.hidden_size, loaded.num_hidden_layers, loaded.num_attention_heads) == (48, config.depth, 3)
    assert loaded.tie_word_embeddings is False


def test_untied_head_round_trips(tmp_path):
    model = small("swa_transformer", tie_embeddings=False)
    loaded = AutoModelForCausalLM.from_pretrained(export_model(model, tmp_path / "untied"))
    assert not torch.equal(loaded.model.lm_head.weight, loaded.model.embed.weight)
    assert torch.equal(loaded.model.lm_head.weight, model.lm_head.weight)


def test_saved_directories_name_the_installed_classes_in_auto_map(exported, tmp_path):
    _, path = exported
    AutoModelForCausalLM.from_pretrained(path).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(path).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    namespace = runpy.run_path(str(tmp_path / "ttmem_auto.py"))
    for reference in [*config["auto_map"].values(), tokenizer_config["auto_map"]["AutoTokenizer"][0]]:
        module, name = reference.split(".")
        assert module == "ttmem_auto" and namespace[name] is getattr(ttmem.hf, name)
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}


# -- generate() ------------------------------------------------------------------------------------------------------


def test_generate_reads_the_prompt_once_then_one_token_per_step(exported):
    _, path = exported
    loaded = AutoModelForCausalLM.from_pretrained(path)
    calls = []
    forward = loaded.model.forward

    def spy(input_ids, state=None):
        calls.append((input_ids.shape[1], None if state is None else state.position))
        return forward(input_ids, state)

    loaded.model.forward = spy
    loaded.generate(torch.randint(0, 256, (1, 10)), max_new_tokens=6, do_sample=False)
    assert calls == [(10, None)] + [(1, 10 + i) for i in range(5)]


def test_sampling_follows_ttmem_sampling_draw_for_draw(exported):
    model, path = exported
    loaded = AutoModelForCausalLM.from_pretrained(path)
    prompt = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))
    for temperature, top_k, top_p in ((1.0, None, None), (0.7, 20, None), (1.3, None, 0.8), (0.9, 50, 0.95)):
        torch.manual_seed(11)
        expected = model.generate(prompt, 16, temperature=temperature, top_k=top_k, top_p=top_p)
        torch.manual_seed(11)
        got = loaded.generate(prompt, max_new_tokens=16, do_sample=True, temperature=temperature,
                              top_k=top_k or 0, top_p=top_p or 1.0)
        assert torch.equal(got, expected), (temperature, top_k, top_p)
    greedy = model.generate(prompt, 16, temperature=0)
    assert not torch.equal(expected, greedy)  # the sampled runs really sampled


def test_eos_token_stops_each_row_and_pads_finished_rows(exported):
    model, path = exported
    loaded = AutoModelForCausalLM.from_pretrained(path)
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(5))
    greedy = model.generate(prompt, 12, temperature=0)
    new = greedy[0, 7:].tolist()
    eos = new[3]
    stop = new.index(eos)  # first time row 0 emits it
    got = loaded.generate(prompt[:1], max_new_tokens=12, do_sample=False, eos_token_id=eos)
    assert got[0].tolist() == greedy[0, : 7 + stop + 1].tolist()
    both = loaded.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    for row in range(2):
        generated = greedy[row, 7:].tolist()
        end = generated.index(eos) + 1 if eos in generated else 12
        expected = generated[:end] + [0] * (both.shape[1] - 7 - end)
        assert both[row, 7:].tolist() == expected


def test_cache_continues_a_sequence_like_one_pass(exported):
    model, path = exported
    loaded = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.randint(0, 256, (1, 21))
    with torch.no_grad():
        first = loaded(ids[:, :13], use_cache=True)
        cache = getattr(first, CACHE_FIELD)  # "cache"; "past_key_values" in transformers releases before the rename
        assert isinstance(cache, TtmemCache) and cache.get_seq_length() == 13
        second = loaded(ids[:, 13:], **{CACHE_FIELD: cache})
        full = model(ids).logits
    torch.testing.assert_close(torch.cat([first.logits, second.logits], dim=1), full, rtol=1e-5, atol=1e-5)


def test_labels_give_the_mean_next_token_cross_entropy(exported):
    model, path = exported
    loaded = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.randint(0, 256, (2, 15))
    with torch.no_grad():
        loss = loaded(ids, labels=ids).loss
        logits = model(ids).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)


# -- tokenizer and pipeline ------------------------------------------------------------------------------------------


def test_byte_tokenizer_is_ttmem_bytes(exported):
    _, path = exported
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(tokenizer, TtmemByteTokenizer) and len(tokenizer) == 256 == tokenizer.vocab_size
    text = "naïve café\n\tdef f(x):\x00 → ✓ 𝔘"
    reference = ByteTokenizer()
    assert tokenizer.encode(text) == reference.encode(text).tolist()
    assert tokenizer.decode(reference.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode("a\nb\x00"), skip_special_tokens=True) == "a\nb"
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (10, 0, 0)
    assert tokenizer.decode([0xC3]) == reference.decode([0xC3]) == "\ufffd"
    batch = tokenizer(["ab", "abcd"], padding=True)
    assert batch["input_ids"] == [[97, 98, 0, 0], [97, 98, 99, 100]]


def test_pipeline_generates_ttmem_greedy_text(exported):
    model, path = exported
    generator = pipeline("text-generation", model=str(path), device="cpu")
    prompt = "def add(a, b):"
    (result,) = generator(prompt, max_new_tokens=9, do_sample=False)
    ids = torch.tensor([list(prompt.encode())])
    expected = ByteTokenizer().decode(model.generate(ids, 9, temperature=0)[0].tolist())
    assert result["generated_text"] == expected and len(expected) > len(prompt)


# -- lm-evaluation-harness -------------------------------------------------------------------------------------------


def write_tasks(folder: Path) -> None:
    docs = [
        {"question": "The cat sat on the", "choices": [" mat", " moon", " a"], "answer": 0,
         "text": "def f(x):\n    return x + 1\n"},
        {"question": "2 + 2 =", "choices": [" 4", " 5"], "answer": 0, "text": "naïve café, über façade."},
        {"question": "", "choices": ["yes", "no"], "answer": 1, "text": "x" * 40},
    ]
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    data = folder / "docs.jsonl"
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: ttmem_hf_choice\n" + common + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"
    )
    (folder / "rolling.yaml").write_text(
        "task: ttmem_hf_rolling\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
    )


def test_lm_eval_hf_backend_scores_an_export_like_ttmem(exported, tmp_path):
    lm_eval = pytest.importorskip("lm_eval", reason="needs lm-evaluation-harness (the dev extra)")
    from lm_eval.tasks import TaskManager

    model, path = exported
    write_tasks(tmp_path)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={path},dtype=float32,backend=causal",
        tasks=["ttmem_hf_choice", "ttmem_hf_rolling"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        device="cpu",
        batch_size=1,
        log_samples=True,
    )
    adapter = HarnessAdapter(model, "bytes")
    checked = 0
    for sample in results["samples"]["ttmem_hf_choice"]:
        for (context, continuation), response in zip(sample["arguments"], sample["resps"], strict=True):
            ((expected, _),) = adapter.loglikelihood([(context, continuation)])
            assert math.isclose(response[0][0], expected, rel_tol=1e-5, abs_tol=1e-4)
            checked += 1
    for sample in results["samples"]["ttmem_hf_rolling"]:
        (expected,) = adapter.loglikelihood_rolling([(sample["target"],)])
        assert math.isclose(sample["resps"][0][0], expected, rel_tol=1e-5, abs_tol=1e-4)
        checked += 1
    assert checked == 7 + 3


@pytest.mark.slow
def test_lm_eval_command_line_loads_an_export(exported, tmp_path):
    pytest.importorskip("lm_eval", reason="needs lm-evaluation-harness (the dev extra)")
    model, path = exported
    write_tasks(tmp_path)
    env = {**os.environ, **OFFLINE, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": str(ROOT / "src"),
           "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args",
               f"pretrained={path},trust_remote_code=True", "--tasks", "ttmem_hf_choice", "--include_path",
               str(tmp_path), "--device", "cpu", "--batch_size", "1", "--output_path", str(tmp_path / "results")]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (result_file,) = (tmp_path / "results").rglob("results_*.json")
    accuracy = json.loads(result_file.read_text())["results"]["ttmem_hf_choice"]["acc,none"]
    adapter = HarnessAdapter(model, "bytes")
    docs = [json.loads(line) for line in (tmp_path / "docs.jsonl").read_text().splitlines()]
    correct = [
        max(range(len(d["choices"])), key=lambda i: adapter.loglikelihood([(d["question"], d["choices"][i])])[0][0])
        == d["answer"]
        for d in docs
    ]
    assert math.isclose(accuracy, sum(correct) / len(docs))
    # The same route from plain transformers: auto_map finds the installed ttmem, and saving again copies no code.
    script = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)\n"
        "assert 'ttmem.hf' in sys.modules\n"
        f"m.save_pretrained({str(tmp_path / 'again')!r})\n"
        f"torch.save(m(torch.arange(40).reshape(2, 20)).logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        assert torch.equal(torch.load(tmp_path / "logits.pt"), model(torch.arange(40).reshape(2, 20)).logits)
    saved = {p.name for p in (tmp_path / "again").iterdir()}
    assert saved == {"config.json", "generation_config.json", "model.safetensors", "ttmem_auto.py"}


# -- bad input -------------------------------------------------------------------------------------------------------


def copy_export(source: Path, target: Path) -> Path:
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def edit_config(path: Path, change) -> None:
    data = json.loads((path / "config.json").read_text())
    change(data)
    (path / "config.json").write_text(json.dumps(data))


def test_a_directory_that_is_not_a_ttmem_export_is_named(exported, tmp_path):
    save_model(small("deltanet"), tmp_path / "native")
    with pytest.raises(NotTtmemExportError, match="ttmem's own format.*ttmem export"):
        TtmemForCausalLM.from_pretrained(tmp_path / "native")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotTtmemExportError, match="no config.json"):
        TtmemForCausalLM.from_pretrained(tmp_path / "empty")
    other = copy_export(exported[1], tmp_path / "other")
    edit_config(other, lambda d: d.update(model_type="gpt2"))
    with pytest.raises(NotTtmemExportError, match="model_type 'gpt2'"):
        TtmemForCausalLM.from_pretrained(other)


def test_a_config_from_a_newer_ttmem_says_upgrade(exported, tmp_path):
    newer = copy_export(exported[1], tmp_path / "newer")
    edit_config(newer, lambda d: d["ttmem"].update(memory_dropout=0.1))
    with pytest.raises(ValueError, match=r"does not know \(memory_dropout\).*newer ttmem"):
        AutoModelForCausalLM.from_pretrained(newer)
    edit_config(newer, lambda d: (d["ttmem"].pop("memory_dropout"), d.update(ttmem_format=2)))
    with pytest.raises(ValueError, match="ttmem_format 2.*newer ttmem"):
        AutoModelForCausalLM.from_pretrained(newer)
    edit_config(newer, lambda d: (d.update(ttmem_format=1), d["ttmem"].update(arch="mamba3")))
    with pytest.raises(ValueError, match="architecture 'mamba3'.*newer ttmem"):
        AutoModelForCausalLM.from_pretrained(newer)
    edit_config(newer, lambda d: d["ttmem"].update(arch="mac", dim=-4))
    with pytest.raises(ValueError, match="invalid ttmem model config: dim must be a positive integer"):
        AutoModelForCausalLM.from_pretrained(newer)


def test_a_missing_weight_file_or_tensor_is_named(exported, tmp_path):
    missing = copy_export(exported[1], tmp_path / "missing")
    (missing / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors: the weight file"):
        AutoModelForCausalLM.from_pretrained(missing)
    from safetensors.torch import load_file, save_file

    partial = copy_export(exported[1], tmp_path / "partial")
    tensors = load_file(partial / "model.safetensors")
    dropped = sorted(tensors)[3]
    save_file({k: v for k, v in tensors.items() if k != dropped}, partial / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"does not match the ttmem 'mac' model: missing {dropped}"):
        AutoModelForCausalLM.from_pretrained(partial)


def test_a_mismatched_tokenizer_vocabulary_is_named(exported, tmp_path):
    wrong = copy_export(exported[1], tmp_path / "wrong")
    edit_config(wrong, lambda d: d["ttmem"].update(vocab_size=300))
    with pytest.raises(ValueError, match="mismatched tokenizer vocabulary.*256 ids.*vocab_size is 300"):
        AutoModelForCausalLM.from_pretrained(wrong)
    with pytest.raises(ValueError, match="mismatched tokenizer vocabulary"):
        AutoTokenizer.from_pretrained(wrong)
    with pytest.raises(ValueError, match="mismatched tokenizer vocabulary"):
        export_model(small("transformer", vocab_size=300), tmp_path / "vocab300")
    with pytest.raises(ValueError, match="only byte-tokenizer models.*tiktoken:gpt2"):
        export_model(small("transformer"), tmp_path / "tiktoken", tokenizer="tiktoken:gpt2")


def test_export_command_errors_are_one_line(exported, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    save_model(small("transformer"), tmp_path / "native")
    cases = [
        ([str(tmp_path / "nothing"), str(tmp_path / "o1")], "checkpoint not found"),
        ([str(tmp_path / "busy"), str(tmp_path / "o2")], "holds no checkpoint"),
        ([str(tmp_path / "native"), str(tmp_path / "busy")], "not empty and is not an earlier ttmem export"),
        ([str(exported[1]), str(tmp_path / "o3")], "already a Hugging Face export"),
    ]
    for argv, message in cases:
        code, _, stderr = run_cli(["export", *argv], capsys)
        assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_padding_and_beam_search_are_refused_clearly(exported):
    _, path = exported
    loaded = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.randint(1, 256, (2, 6))
    left_padded = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="padding before real tokens"):
        loaded(ids, attention_mask=left_padded)
    right_padded = left_padded.flip(1)
    with torch.no_grad():  # right padding cannot change the real tokens' logits in a causal model
        torch.testing.assert_close(loaded(ids, attention_mask=right_padded).logits, loaded(ids).logits)
    with pytest.raises(ValueError, match="cannot be reordered.*num_beams=1"):
        loaded.generate(ids[:1], max_new_tokens=3, num_beams=2, do_sample=False)
