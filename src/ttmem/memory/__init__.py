"""The inner loop: memory architectures, objectives, retention, learners, the chunked engine, the exact
delta-rule path, the token-by-token reference, and the state carried across calls."""

from .architectures import MemoryArchitecture
from .functional import (
    IMPLS,
    decode_in_place,
    initial_state,
    memorize,
    read_chunk_start,
    run_memory,
    set_value_checks,
    value_checks,
    value_checks_enabled,
)
from .objectives import Objective
from .retention import Retention
from .rules import RULES, MemoryRule, get_rule
from .state import MemoryState

__all__ = [
    "IMPLS", "RULES", "MemoryArchitecture", "MemoryRule", "MemoryState", "Objective", "Retention", "decode_in_place",
    "get_rule", "initial_state", "memorize", "read_chunk_start", "run_memory", "set_value_checks", "value_checks",
    "value_checks_enabled",
]
