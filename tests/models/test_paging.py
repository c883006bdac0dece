"""Complexity gating and pages inside the language models: config fields, streaming, save/load, the CLI."""

import pytest
import torch

from ttmem.cli import main
from ttmem.models import ModelConfig, build_model, load_model, save_model
from ttmem.train import latest_checkpoint, load_checkpoint

SMALL = dict(dim=32, depth=2, heads=2, window=8, segment_len=8, chunk_size=4, persistent_tokens=2, mlp_ratio=2.0)
OPTIONS = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=1.0, page_threshold_units="noise",
               page_routing="manifold", kinetics_mix=0.3, complexity_args={"phase_mix": 0.5, "quorum_mix": 0.3})


def small_model(arch, **overrides):
    torch.manual_seed(0)
    return build_model(ModelConfig(arch=arch, **{**SMALL, **OPTIONS, **overrides})).double()


@pytest.mark.parametrize("arch", ["mac", "mag", "mal", "lmm", "hope"])
def test_streaming_decode_equals_full_forward_with_pages(arch):
    model = small_model(arch).eval()
    tokens = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens).logits
        out = model(tokens[:, :7])
        pieces = [out.logits]
        for t in range(7, tokens.shape[1]):
            out = model(tokens[:, t:t + 1], out.state)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-10, rtol=0)
    switches = sum(int(m.page_switch_events) for m in model.modules() if hasattr(m, "page_switch_events"))
    assert switches > 0


def test_config_round_trip_and_checkpoint(tmp_path):
    model = small_model("mac").float().eval()
    assert ModelConfig.from_dict(model.config.to_dict()) == model.config
    tokens = torch.randint(0, 256, (2, 13))
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    assert list(loaded.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


def test_options_off_config_builds_the_plain_model():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(arch="mac", **SMALL))
    assert plain.config.memory_options() is None
    assert not any("symplectic" in name for name in plain.state_dict())


@pytest.mark.parametrize("fields, match", [
    (dict(use_symplectic_gating=True, num_pages=2, page_routing="random"), "page_routing"),
    (dict(use_symplectic_gating=True, num_pages=4, page_routing="hierarchical", coarse_pages=3), "coarse_pages"),
    (dict(use_symplectic_gating=True, hierarchy_mix=-1.0), "hierarchy_mix"),
    (dict(kinetics_mix=2.0), "kinetics_mix"),
    (dict(use_symplectic_gating=True, symplectic_page_threshold=float("nan")), "symplectic_page_threshold"),
    (dict(arch="transformer", use_symplectic_gating=True), "has none"),
    (dict(use_symplectic_gating=True, complexity_args=[1]), "complexity_args"),
])
def test_bad_fields_are_rejected_at_construction(fields, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{"arch": "mac", **SMALL, **fields})


@pytest.mark.parametrize("preset, extra", [
    ("mac-tiny", []),
    ("hope-tiny", ["model_args.cms_periods=[4,8]", "model_args.kinetics_mix=0.5"]),
])
def test_train_command_reaches_the_options(tmp_path, capsys, preset, extra):
    corpus = tmp_path / "text.txt"
    corpus.write_text("".join(f"line {i} of the corpus\n" for i in range(400)))
    common = ["train", "--no-progress", f"model={preset}", f"data={corpus}", f"out_dir={tmp_path / 'run'}",
              "seq_len=96", "batch_size=2", "steps=2", "warmup_steps=1", "eval_every=2", "eval_tokens=200",
              "eval_depths=1", "eval_samples=1", "baseline=none", "report=false", "model_args.dim=32",
              "model_args.depth=1", "model_args.heads=2", *extra]
    bad = main([*common, "model_args.use_symplectic_gating=true", "model_args.num_pages=0"])
    err = capsys.readouterr().err
    assert bad != 0 and "num_pages" in err and "Traceback" not in err
    code = main([*common, "model_args.use_symplectic_gating=true", "model_args.num_pages=2",
                 "model_args.symplectic_page_threshold=0.0"])
    assert code == 0, capsys.readouterr().err
    payload = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    config = payload["model_record"]["config"]
    assert config["arch"] == preset.split("-")[0] and config["num_pages"] == 2 and config["use_symplectic_gating"]
    switches = [v for name, v in payload["model"].items() if name.endswith("page_switch_events")]
    assert switches and all(int(v) > 0 for v in switches)  # threshold 0: pages changed during training
