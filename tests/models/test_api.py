"""Config, presets, parameter counts, checkpoint errors, generation and sampling."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from ttmem.layers.mlp import mlp_hidden_size
from ttmem.models import (
    ARCHITECTURES,
    MODEL_PRESETS,
    ModelConfig,
    build_model,
    count_parameters,
    load_model,
    load_weights,
    save_model,
    seal_model_dir,
)
from ttmem.models.presets import SIZE_TARGETS
from ttmem.models.sampling import filter_logits, sample_next_token


def small(arch="transformer", **overrides):
    torch.manual_seed(0)
    fields = dict(dim=32, depth=2, heads=2, window=8, mlp_ratio=2.0)
    return build_model(ModelConfig(arch=arch, **{**fields, **overrides}))


def transformer_parameters(vocab, dim, depth, mlp_ratio, tied):
    """Closed form: embedding (+ head if untied), per block 2 RMSNorm + q,k,v,o + SwiGLU, final norm."""
    hidden = mlp_hidden_size(dim, mlp_ratio)
    per_block = 2 * dim + 4 * dim * dim + 3 * dim * hidden
    return vocab * dim * (1 if tied else 2) + depth * per_block + dim


@pytest.mark.parametrize("tied", [True, False])
def test_count_parameters_matches_closed_form(tied):
    model = small(tie_embeddings=tied)
    assert count_parameters(model) == transformer_parameters(256, 32, 2, 2.0, tied)


@pytest.mark.parametrize("size", ["340m", "760m", "1.3b"])
def test_paper_size_transformer_matches_closed_form(size):
    c = MODEL_PRESETS[f"transformer-{size}"]
    with torch.device("meta"):
        model = build_model(c)
    assert count_parameters(model) == transformer_parameters(c.vocab_size, c.dim, c.depth, c.mlp_ratio, tied=True)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_preset_count_is_close_to_its_name(arch):
    for size, target in SIZE_TARGETS.items():
        with torch.device("meta"):
            counted = count_parameters(build_model(f"{arch}-{size}"))
        assert abs(counted - target) / target < 0.02, (size, counted)
        if size == "tiny":
            assert 1e6 <= counted <= 5e6


def test_presets_cover_every_architecture():
    for arch in ARCHITECTURES:
        for size in SIZE_TARGETS:
            assert MODEL_PRESETS[f"{arch}-{size}"].arch == arch


def test_build_model_rejects_unknown_names_and_fields():
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        build_model("nope")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        build_model("transformer-tiny", depthh=3)
    with pytest.raises(TypeError, match="ModelConfig or a preset name"):
        build_model(3)
    assert build_model("transformer-tiny", depth=1).config.depth == 1


def test_config_validation_and_round_trip():
    config = ModelConfig(arch="mac", dim=64, heads=4, cms_periods=[2, 4])
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="arch must be one of"):
        ModelConfig(arch="rnn")
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        ModelConfig(depth=0)
    with pytest.raises(ValueError, match="divisible by heads"):
        ModelConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="memory_rule for arch 'deltanet'"):
        ModelConfig(arch="deltanet", memory_rule="titans")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"arch": "transformer", "bogus": 1})


def test_input_validation():
    model = small()
    with pytest.raises(TypeError, match="LongTensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 256\)"):
        model(torch.tensor([[1, 300]]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.tensor([[1]]), -1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(torch.tensor([[1]]), 2, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.tensor([[1]]), 2, temperature=-1.0)


def test_load_errors_name_what_differs(tmp_path):
    model = small()
    save_model(model, tmp_path / "a")
    with pytest.raises(ValueError, match="holds arch 'transformer' but the model is 'swa_transformer'"):
        load_weights(small("swa_transformer"), tmp_path / "a")
    with pytest.raises(ValueError, match="depth: checkpoint 2 vs model 3"):
        load_weights(small(depth=3), tmp_path / "a")
    weights = load_file(str(tmp_path / "a" / "model.safetensors"))
    weights["extra.weight"] = torch.zeros(2)
    del weights["norm.weight"]
    save_file(weights, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(ValueError, match="corrupt or truncated"):  # edited files fail their digest check
        load_model(tmp_path / "a")
    seal_model_dir(tmp_path / "a")  # ... until re-recorded on purpose
    with pytest.raises(ValueError, match=r"missing \['norm.weight'\], unexpected \['extra.weight'\]"):
        load_model(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nothing")


def test_tied_embeddings_saved_once_and_stay_tied(tmp_path):
    model = small()
    save_model(model, tmp_path / "m")
    names = set(load_file(str(tmp_path / "m" / "model.safetensors")))
    assert "embed.weight" in names and "lm_head.weight" not in names
    loaded = load_model(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.embed.weight


def test_greedy_generation_equals_argmax_over_full_forwards():
    model = small("swa_transformer", window=4).eval()
    prompt = torch.randint(0, 256, (2, 5))
    generated = model.generate(prompt, 9, temperature=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(9):
            next_token = model(expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat((expected, next_token), dim=1)
    assert torch.equal(generated, expected)
    assert torch.equal(model.generate(prompt, 9, top_k=1), expected)


@pytest.mark.parametrize("arch", ["transformer", "mac", "hope"])
def test_generated_ids_are_ordinary_tensors_usable_in_training(arch):
    """generate runs under inference mode; what it returns, and the model after it, must still train."""
    model = small(arch, chunk_size=4, segment_len=4).eval()
    ids = model.generate(torch.randint(0, 256, (1, 4)), 5)
    assert not ids.is_inference()
    fresh = small(arch, chunk_size=4, segment_len=4)  # the same weights, never used for generation
    for m in (model.train(), fresh):
        m(ids).logits.float().mean().backward()
    for (name, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


def test_sampling_is_reproducible_with_a_generator():
    model = small().eval()
    prompt = torch.randint(0, 256, (1, 4))
    a = model.generate(prompt, 6, top_p=0.9, generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 6, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (1, 10)


def test_filter_logits_top_k_and_top_p():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    kept_k = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept_k.tolist() == [[True, False, True, False]]
    # Nucleus 0.8: 0.5 + 0.3 reaches 0.8, so 0.15 and 0.05 are dropped; 0.81 also keeps 0.15.
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, False, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    seeds = [torch.Generator().manual_seed(s) for s in range(400)]
    draws = torch.cat([sample_next_token(logits, 1.0, top_k=2, generator=g) for g in seeds])
    frequency_first = (draws == 0).float().mean().item()
    assert abs(frequency_first - 0.5 / 0.8) < 4 * math.sqrt(0.625 * 0.375 / 400)
    assert set(draws.flatten().tolist()) <= {0, 2}


def test_variant_presets_are_their_architecture_with_another_memory_rule():
    from ttmem.models.presets import VARIANTS

    for name, (arch, changes, ratios) in VARIANTS.items():
        for size, target in SIZE_TARGETS.items():
            variant, base = MODEL_PRESETS[f"{name}-{size}"], MODEL_PRESETS[f"{arch}-{size}"]
            assert variant == base.replace(**changes, mlp_ratio=ratios[size]) and variant.arch == arch
            with torch.device("meta"):
                assert abs(count_parameters(build_model(variant)) - target) / target < 0.02
    assert build_model("lmm_linear-tiny", dim=32, depth=1, heads=2).config.rule == "titans_linear"
