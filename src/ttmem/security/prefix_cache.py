"""Prefix cache: a token trie of cached prompt states, shared by requests whose prompts share a prefix.

Each cached prompt is an entry (its tokens and the backend state after them). Every trie node records
the entries passing through it, so a lookup finds the longest cached prefix of a new prompt: any node on
the path when the backend can cut a state to a prefix (``supports_slicing``, e.g. a key/value cache),
otherwise only nodes where an entry ends. The cache holds at most ``max_entries`` prompts and evicts the
least recently used one, pruning its trie path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from ttmem.security.backends import Backend


class _Node:
    __slots__ = ("children", "entries", "ends")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.entries: dict[int, None] = {}  # ids of cached prompts passing through (insertion ordered)
        self.ends: int | None = None  # id of the cached prompt that ends here


class PrefixCache:
    """Token trie of cached prompt states, bounded to ``max_entries`` prompts (least recently used out)."""

    def __init__(self, backend: Backend, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.backend, self.max_entries = backend, max_entries
        self.root = _Node()
        self.entries: OrderedDict[int, tuple[tuple[int, ...], Any]] = OrderedDict()
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.entries)

    def _match(self, tokens: Sequence[int], limit: int) -> tuple[int, int | None]:
        node, best, best_id = self.root, 0, None
        for depth, tok in enumerate(tokens[:limit], start=1):
            node = node.children.get(tok)
            if node is None:
                break
            if self.backend.supports_slicing:
                best, best_id = depth, next(reversed(node.entries))
            elif node.ends is not None:
                best, best_id = depth, node.ends
        return best, best_id

    def match_length(self, tokens: Sequence[int], limit: int) -> int:
        """Longest usable cached prefix of ``tokens`` (at most ``limit`` tokens)."""
        return self._match(tokens, limit)[0]

    def lookup(self, tokens: Sequence[int], limit: int) -> tuple[int, Any]:
        """(length, state after that prefix) for the longest usable cached prefix; (0, None) if none."""
        length, entry_id = self._match(tokens, limit)
        if entry_id is None:
            return 0, None
        self.entries.move_to_end(entry_id)
        cached, state = self.entries[entry_id]
        return length, state if len(cached) == length else self.backend.slice_state(state, length)

    def insert(self, tokens: Sequence[int], state: Any) -> None:
        """Cache the state after ``tokens``; evicts the least recently used prompts beyond the bound."""
        key = tuple(tokens)
        node = self.root
        for tok in key:
            node = node.children.get(tok) or node.children.setdefault(tok, _Node())
        if node.ends is not None:
            self.entries[node.ends] = (key, state)
            self.entries.move_to_end(node.ends)
            return
        entry_id, self._next_id = self._next_id, self._next_id + 1
        node = self.root
        for tok in key:
            node = node.children[tok]
            node.entries[entry_id] = None
        node.ends = entry_id
        self.entries[entry_id] = (key, state)
        while len(self.entries) > self.max_entries:
            self._remove(*self.entries.popitem(last=False))

    def _remove(self, entry_id: int, item: tuple[tuple[int, ...], Any]) -> None:
        node = self.root
        for tok in item[0]:
            child = node.children[tok]
            child.entries.pop(entry_id, None)
            if child.ends == entry_id:
                child.ends = None
            if not child.entries:
                del node.children[tok]
                return
            node = child
