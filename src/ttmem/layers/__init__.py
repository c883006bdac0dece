"""Sequence mixers with their projections: the neural memory layer (and attention, linear attention, DeltaNet
family, continuum memory in sibling modules)."""

from .neural_memory import NeuralMemory, NeuralMemoryState

__all__ = ["NeuralMemory", "NeuralMemoryState"]
