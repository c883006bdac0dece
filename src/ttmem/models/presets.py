"""Named model presets: every architecture at every size, as plain data.

Sizes: ``tiny`` trains on a CPU (1–5M parameters, byte vocabulary); ``340m``, ``760m`` and ``1.3b``
are the Titans / Nested Learning paper shapes (depth × width × heads: 24×1024×16, 24×1536×16,
18×2048×8) with the papers' 32K-token vocabulary and tied embeddings. The MLP ratio of each
paper size is chosen so a Transformer lands near the size in its name; memory architectures carry
their memory's extra parameters on top (``count_parameters`` reports the exact figure).
"""

from __future__ import annotations

from typing import Any

from ttmem.models.config import ARCHITECTURES, ModelConfig

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=192, depth=4, heads=4, mlp_ratio=8 / 3, window=64, segment_len=32, chunk_size=16,
                 cms_periods=(16, 64, 256)),
    "340m": dict(vocab_size=32000, dim=1024, depth=24, heads=16, mlp_ratio=8 / 3, window=512, segment_len=512,
                 chunk_size=64, cms_periods=(16, 256, 4096)),
    "760m": dict(vocab_size=32000, dim=1536, depth=24, heads=16, mlp_ratio=3.0, window=512, segment_len=512,
                 chunk_size=64, cms_periods=(16, 256, 4096)),
    "1.3b": dict(vocab_size=32000, dim=2048, depth=18, heads=8, mlp_ratio=4.0, window=512, segment_len=512,
                 chunk_size=64, cms_periods=(16, 256, 4096)),
}

# Settings an architecture needs beyond the size (Titans attention variants use persistent tokens).
ARCH_SETTINGS: dict[str, dict[str, Any]] = {
    "mac": dict(persistent_tokens=4),
    "mag": dict(persistent_tokens=4),
    "mal": dict(persistent_tokens=4),
}

MODEL_PRESETS: dict[str, ModelConfig] = {
    f"{arch}-{size}": ModelConfig(arch=arch, **fields, **ARCH_SETTINGS.get(arch, {}))
    for arch in ARCHITECTURES
    for size, fields in SIZES.items()
}
