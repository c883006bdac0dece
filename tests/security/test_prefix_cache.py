"""Prefix cache: LRU eviction with trie pruning, prefix states that continue like uncached ones, exact-only reuse."""

import torch

from tests.helpers.serving_cases import tiny_backend
from ttmem.security.prefix_cache import PrefixCache


def test_prefix_cache_eviction_and_slicing():
    attention = tiny_backend("attention")
    cache = PrefixCache(attention, max_entries=2)
    prompts = [[1, 2, 3], [1, 2, 4, 5], [7, 8]]
    for p in prompts:
        cache.insert(p, attention.extend(None, p)[0])
    assert len(cache) == 2 and cache.match_length([1, 2, 3], 3) == 2  # [1,2,3] evicted, [1,2] via [1,2,4,5]
    length, state = cache.lookup([1, 2, 4, 0], 4)
    assert length == 3
    torch.testing.assert_close(attention.extend(state, [0])[1], attention.extend(None, [1, 2, 4, 0])[1])
    assert 7 in cache.root.children and 3 not in cache.root.children[1].children[2].children


def test_non_sliceable_states_reuse_only_exact_prompts():
    theta = tiny_backend("theta")
    cache = PrefixCache(theta)
    cache.insert([1, 2, 3], theta.extend(None, [1, 2, 3])[0])
    assert cache.match_length([1, 2, 3, 4], 4) == 3
    assert cache.match_length([1, 2, 5], 3) == 0
