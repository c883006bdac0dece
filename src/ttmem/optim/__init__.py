"""Outer-loop optimisers from Nested Learning, plus EWC for continual learning.

All optimisers are drop-in ``torch.optim.Optimizer`` classes (parameter groups, ``state_dict``,
closures). ``newton_schulz`` is a standalone batched orthogonalisation other packages can reuse.
"""

from ttmem.optim.deep_momentum import DeepMomentumGD
from ttmem.optim.ewc import EWC, estimate_fisher
from ttmem.optim.m3 import M3, m3_param_groups
from ttmem.optim.momentum import DeltaRuleMomentum, MomentumGD, PreconditionedMomentum
from ttmem.optim.nested import NestedDeepMomentumGD
from ttmem.optim.newton_schulz import newton_schulz

__all__ = [
    "M3",
    "m3_param_groups",
    "DeepMomentumGD",
    "NestedDeepMomentumGD",
    "DeltaRuleMomentum",
    "PreconditionedMomentum",
    "MomentumGD",
    "EWC",
    "estimate_fisher",
    "newton_schulz",
]
