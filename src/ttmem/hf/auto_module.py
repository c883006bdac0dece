"""The one-import module that every saved ttmem model and tokenizer carries, and the ``auto_map`` entries naming it.

Tools that cannot ``import ttmem.hf`` before loading (the ``lm_eval`` command line) find the classes through
``auto_map`` with ``trust_remote_code=True``; the module they run only imports the installed ttmem, so the code
that executes is the package's, never a copy stored with the weights.
"""

from __future__ import annotations

from pathlib import Path

AUTO_MODULE = "ttmem_auto"
MODEL_AUTO_MAP = {
    "AutoConfig": f"{AUTO_MODULE}.TtmemConfig",
    "AutoModelForCausalLM": f"{AUTO_MODULE}.TtmemForCausalLM",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": [f"{AUTO_MODULE}.TtmemByteTokenizer", None]}
_SOURCE = '''"""Loads this ttmem model with the installed ttmem (pip install 'ttmem[hf]')."""

from ttmem.hf import TtmemByteTokenizer, TtmemConfig, TtmemForCausalLM  # noqa: F401
'''


def write_auto_module(directory: str | Path) -> None:
    """Write ``ttmem_auto.py`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{AUTO_MODULE}.py").write_text(_SOURCE)


def keep_auto_map(cls: type) -> type:
    """Class decorator: make Hugging Face's ``register_for_auto_class`` a no-op for ``cls``.

    Loading through ``auto_map`` registers the classes for saving, and saving would then copy the ttmem source
    files that define them next to the weights and point ``auto_map`` at those copies; ttmem's ``auto_map``
    already names ``ttmem_auto.py``, which imports the installed package instead.
    """
    cls.register_for_auto_class = classmethod(lambda klass, auto_class=None: None)
    return cls
