"""Fused weights: one parameter that stacks several logical matrices along its rows.

A layer that computes queries, keys and values with one ``nn.Linear(dim, 3 * inner)`` (and splits the output
into thirds) holds three ``(inner, dim)`` matrices in one ``(3 * inner, dim)`` weight. Code that treats a weight
as one linear map, such as an optimiser that orthogonalises each matrix's update (``ttmem.optim.M3``, as Muon
does), must see the three: the polar factor of the stacked matrix is not the three polar factors stacked (it
couples the blocks through their shared column space and rescales them jointly).

A layer declares the layout once, where it builds the weight: ``declare_row_blocks(self.to_qkv, [inner] * 3)``
records, on the module, the row count of each logical matrix, top to bottom, in the order the output is split.
Readers call ``row_blocks(module)``; ``None`` means the weight is one matrix. The declaration lives on the
module (an attribute ``copy.deepcopy``, ``.to()`` and wrapping keep), not on the parameter tensor, and it covers
every parameter of the module whose first dimension is the stacked one (the ``weight`` of a ``Linear``, a
depthwise ``Conv1d``'s ``(channels, 1, k)`` weight).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ROW_BLOCKS_ATTRIBUTE = "fused_row_blocks"


def check_row_blocks(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    """``sizes`` as a tuple, or a ValueError naming ``name`` unless it is a non-empty sequence of integers >= 1."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or not sizes or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 1, got {sizes!r}")
    return tuple(sizes)


def declare_row_blocks(module: nn.Module, sizes: Sequence[int]) -> None:
    """Declare that ``module.weight`` stacks ``len(sizes)`` logical matrices of ``sizes[i]`` rows each.

    Raises:
        ValueError: ``module`` has no >=2-D ``weight`` parameter, a size is not a positive integer, or the
            sizes do not add up to ``module.weight.shape[0]``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.ndim < 2:
        raise ValueError(f"declare_row_blocks needs a module with a >=2-D weight, got {type(module).__name__}")
    sizes = check_row_blocks("sizes", sizes)
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"sizes {sizes} add up to {sum(sizes)} rows, but the weight has shape {tuple(weight.shape)}")
    setattr(module, ROW_BLOCKS_ATTRIBUTE, sizes)


def row_blocks(module: nn.Module) -> tuple[int, ...] | None:
    """Row counts of the logical matrices stacked in ``module.weight``, or None for a plain weight."""
    return getattr(module, ROW_BLOCKS_ATTRIBUTE, None)
