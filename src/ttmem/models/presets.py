"""Named model presets: every architecture at every size, as plain data.

Sizes: ``tiny`` trains on a CPU (about 2.5M parameters, byte vocabulary); ``340m``, ``760m`` and ``1.3b``
are the Titans / Nested Learning paper shapes (depth × width × heads: 24×1024×16, 24×1536×16,
18×2048×8) with the papers' 32K-token vocabulary and tied embeddings.

Equal parameter count at equal shape: memory and hybrid mixers hold more weights than attention
(MAG runs attention and a memory side by side), so each architecture's MLP ratio is calibrated
(``MLP_RATIOS``, computed once by solving count(ratio) = target, counts linear in the hidden size)
so that ``count_parameters`` lands on the size in the name. The table is data; a test checks it.
Hybrids therefore have narrower MLPs than a Transformer of the same name.
"""

from __future__ import annotations

from typing import Any

from ttmem.models.config import ARCHITECTURES, ModelConfig

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=192, depth=4, heads=4, window=64, segment_len=32, chunk_size=16, cms_periods=(16, 64, 256)),
    "340m": dict(vocab_size=32000, dim=1024, depth=24, heads=16, window=512, segment_len=512, chunk_size=64,
                 cms_periods=(16, 256, 4096)),
    "760m": dict(vocab_size=32000, dim=1536, depth=24, heads=16, window=512, segment_len=512, chunk_size=64,
                 cms_periods=(16, 256, 4096)),
    "1.3b": dict(vocab_size=32000, dim=2048, depth=18, heads=8, window=512, segment_len=512, chunk_size=64,
                 cms_periods=(16, 256, 4096)),
}
SIZE_TARGETS = {"tiny": 2.5e6, "340m": 340e6, "760m": 760e6, "1.3b": 1.3e9}

_LINEAR_MEMORY_RATIOS = {"tiny": 3.75, "340m": 2.37, "760m": 2.49, "1.3b": 3.74}
_TITANS_HYBRID_RATIOS = {"tiny": 1.81, "340m": 0.88, "760m": 1.0, "1.3b": 2.11}
MLP_RATIOS: dict[str, dict[str, float]] = {
    "transformer": {"tiny": 4.2, "340m": 2.74, "760m": 2.85, "1.3b": 4.12},
    "swa_transformer": {"tiny": 4.2, "340m": 2.74, "760m": 2.85, "1.3b": 4.12},
    "linear_attention": _LINEAR_MEMORY_RATIOS,
    "deltanet": _LINEAR_MEMORY_RATIOS,
    "gated_deltanet": {"tiny": 3.74, "340m": 2.37, "760m": 2.49, "1.3b": 3.74},
    "lmm": {"tiny": 3.15, "340m": 2.21, "760m": 2.34, "1.3b": 3.44},
    "mac": _TITANS_HYBRID_RATIOS,
    "mag": {"tiny": 1.14, "340m": 0.21, "760m": 0.34, "1.3b": 1.44},
    "mal": _TITANS_HYBRID_RATIOS,
    "hope": {"tiny": 0.59, "340m": 0.11, "760m": 0.17, "1.3b": 0.72},
    "theta_lm": _LINEAR_MEMORY_RATIOS,
}

# Settings an architecture needs beyond the size (Titans attention variants use persistent tokens).
ARCH_SETTINGS: dict[str, dict[str, Any]] = {
    "mac": dict(persistent_tokens=4),
    "mag": dict(persistent_tokens=4),
    "mal": dict(persistent_tokens=4),
}

# Named variants of an architecture: another memory rule in the same shell, with the MLP ratio solved again for
# the size in the name (a deep memory's learned initial weights are parameters, a matrix memory's are not).
# lmm_linear is Titans' long-term memory module with the
# paper's shallowest memory, a matrix (L_M = 1), trained in context by the same chunked gradient descent with
# momentum and forgetting; the main job's memory model (it learns MQAR within the job's budget, the deep
# memory does not: README, "Main job").
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, float]]] = {
    "lmm_linear": ("lmm", dict(memory_rule="titans_linear"), {"tiny": 3.74, "340m": 2.36, "760m": 2.48, "1.3b": 3.74}),
}

MODEL_PRESETS: dict[str, ModelConfig] = {
    f"{arch}-{size}": ModelConfig(arch=arch, mlp_ratio=MLP_RATIOS[arch][size], **fields, **ARCH_SETTINGS.get(arch, {}))
    for arch in ARCHITECTURES
    for size, fields in SIZES.items()
}
MODEL_PRESETS.update({
    f"{name}-{size}": MODEL_PRESETS[f"{arch}-{size}"].replace(**changes, mlp_ratio=ratios[size])
    for name, (arch, changes, ratios) in VARIANTS.items()
    for size in SIZES
})
