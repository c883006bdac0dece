"""One checkpoint story: a training checkpoint is a saved-model directory plus trainer state, and every
reader (`load_model`, `ttmem eval`, `ttmem generate`) takes a saved model, a checkpoint or a run
directory; single-file checkpoints of earlier versions still load (and resume exactly) or say what to do.

References are independent of the files under test: the in-memory model that was trained or saved, the
library's own sampler and evaluator run on it, and an uninterrupted run's losses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.fault_tools import tiny_train
from ttmem.cli import main
from ttmem.data import get_tokenizer, load_corpus
from ttmem.eval.generation import sample
from ttmem.models import ModelConfig, build_model, load_model
from ttmem.models.checkpoint import CONFIG_FILE, TRAINER_STATE_FILE, WEIGHTS_FILE
from ttmem.train import Trainer, read_log, resolve_config
from ttmem.train import checkpoint as ckpt
from ttmem.train.objective import evaluate_lm

PRESET = ["model=gated_deltanet-tiny", "model_args.dim=32", "model_args.depth=1", "model_args.heads=2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("formats") / "code.txt"
    path.write_text("".join(f"def h{i}(x):\n    return x + {i * 7 % 13}\n\n" for i in range(300)))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """(run directory, the trained model as it is in memory) of a preset model with tied embeddings."""
    out = tmp_path_factory.mktemp("preset") / "run"
    config = resolve_config(
        None,
        [*PRESET, f"data={corpus}", f"out_dir={out}", "baseline=none", "report=false", "seq_len=32",
         "batch_size=4", "steps=3", "warmup_steps=1", "eval_every=100", "eval_tokens=256", "ckpt_every=2", "aux_task="],
    )
    result = Trainer(config, progress=False).fit()
    return out, result.model.eval()


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def encode(text: str) -> torch.Tensor:
    return torch.as_tensor(get_tokenizer("bytes").encode(text), dtype=torch.long)[None]


def decode(ids: torch.Tensor) -> str:
    return get_tokenizer("bytes").decode(ids[0].tolist())


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_training_checkpoint_is_a_model_directory_with_trainer_state(trained):
    out, model = trained
    newest = ckpt.latest_checkpoint(out / "checkpoints")
    assert newest.name == "step-0000003" and newest.is_dir()
    assert {p.name for p in newest.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE, TRAINER_STATE_FILE, "manifest.json"}
    assert json.loads((newest / CONFIG_FILE).read_text()) == model.config.to_dict()
    assert model.config.tie_embeddings  # stored once, restored tied
    loaded = load_model(newest)
    assert same_weights(loaded, model)
    assert loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()


def test_load_model_reads_a_run_directory_a_checkpoint_and_a_saved_model(trained, tmp_path):
    out, model = trained
    assert same_weights(load_model(out), model)  # the run's newest checkpoint
    assert same_weights(load_model(out / "checkpoints"), model)
    older = load_model(ckpt.checkpoint_path(out / "checkpoints", 2))
    assert not same_weights(older, model)  # step 2, one optimizer step before the end
    model.save(str(tmp_path / "saved"))
    assert same_weights(load_model(tmp_path / "saved"), model)
    with pytest.raises(ValueError, match="not a model directory"):
        load_model(tmp_path)


def test_a_saved_model_is_evaluated_and_sampled_through_the_cli(tmp_path, corpus, capsys):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gated_deltanet", vocab_size=256, dim=32, depth=1, heads=2)).eval()
    model.save(str(tmp_path / "saved"))
    code, stdout, stderr = run(["generate", str(tmp_path / "saved"), "--prompt", "def h", "--max-new-tokens", "12",
                                "--seed", "3"], capsys)
    assert code == 0, stderr
    assert stdout == decode(sample(model, encode("def h"), 12, 0.8, None, None, 3)) + "\n"
    report = tmp_path / "eval.json"
    code, stdout, stderr = run(["eval", str(tmp_path / "saved"), "--data", str(corpus), "--seq-len", "32",
                                "--eval-tokens", "256", "--json", str(report)], capsys)
    assert code == 0, stderr
    row = json.loads(report.read_text())[0]
    data = load_corpus(str(corpus), "bytes", max_bytes=None)
    reference = evaluate_lm(model, data.validation, 32, 8, 256, data.bytes_per_token)
    assert row["arch"] == "gated_deltanet" and row["val_bpb"] == pytest.approx(reference["bpb"], rel=1e-6)


def test_eval_and_generate_read_a_run_directory_and_a_checkpoint(trained, capsys):
    out, model = trained
    newest = ckpt.latest_checkpoint(out / "checkpoints")
    texts = []
    for source in (out, newest):
        code, stdout, stderr = run(["generate", str(source), "--prompt", "def ", "--max-new-tokens", "8"], capsys)
        assert code == 0, stderr
        texts.append(stdout)
    assert texts == [decode(sample(model, encode("def "), 8, 0.8, None, None, 0)) + "\n"] * 2


def _as_earlier_version(checkpoint: Path, path: Path) -> Path:
    """The single-file checkpoint an earlier version wrote for the same state (format version 1: the full
    state dict, tied names included, in one verified torch.save file)."""
    payload = ckpt.load_checkpoint(checkpoint)
    return ckpt.save_legacy_checkpoint(path, payload)


def test_an_earlier_single_file_checkpoint_loads_for_eval_and_generate_and_load_model_says_what_to_do(
    trained, tmp_path, capsys
):
    out, model = trained
    legacy = _as_earlier_version(ckpt.latest_checkpoint(out / "checkpoints"), tmp_path / "old" / "step-0000003.pt")
    code, stdout, stderr = run(["generate", str(legacy), "--prompt", "def ", "--max-new-tokens", "8"], capsys)
    assert code == 0, stderr
    assert stdout == decode(sample(model, encode("def "), 8, 0.8, None, None, 0)) + "\n"
    code, stdout, stderr = run(["generate", str(tmp_path / "old"), "--max-new-tokens", "4"], capsys)  # its folder
    assert code == 0, stderr
    for source in (legacy, tmp_path / "old"):  # the file, and a folder holding only such files
        with pytest.raises(ValueError, match="single-file training checkpoint of an earlier ttmem version") as err:
            load_model(source)
        assert "\n" not in str(err.value) and "ttmem eval" in str(err.value)


def test_a_run_resumed_from_an_earlier_single_file_checkpoint_continues_exactly(tmp_path, corpus, capsys):
    reference = tmp_path / "reference"
    assert main(tiny_train(reference, corpus, "steps=4")) == 0
    with pytest.raises(ValueError, match="holds a model built by a custom factory"):  # no config.json to rebuild it
        load_model(reference)
    legacy = _as_earlier_version(ckpt.checkpoint_path(reference / "checkpoints", 2),
                                 tmp_path / "old" / "checkpoints" / "step-0000002.pt")
    resumed = tmp_path / "resumed"
    code, _, stderr = run([*tiny_train(resumed, corpus, "steps=4"), "--resume-from", str(legacy.parent.parent)],
                          capsys)
    assert code == 0, stderr

    def losses(run_dir: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_log(run_dir / "log.jsonl") if "loss" in r}

    assert losses(resumed) == {s: v for s, v in losses(reference).items() if s > 2}
    from_directory = tmp_path / "from_directory"  # --resume-from names one checkpoint directory
    code, _, stderr = run([*tiny_train(from_directory, corpus, "steps=4"), "--resume-from",
                           str(ckpt.checkpoint_path(reference / "checkpoints", 2))], capsys)
    assert code == 0, stderr
    assert losses(from_directory) == losses(resumed)
    assert [p.name for _, p in ckpt.list_checkpoints(resumed / "checkpoints")] == ["step-0000004"]
    final, expected = (ckpt.load_checkpoint(ckpt.checkpoint_path(r / "checkpoints", 4))["model"]
                       for r in (resumed, reference))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
