"""Synthetic long-context tasks, generated on the fly from a seed: MQAR, needle in a haystack, copying.

Every example is a pair (inputs [T], targets [T]) of int64 arrays, targets = next token or -100 where
the loss is off; the loss is on the answers only. Design choices:

- MQAR follows Zoology's multi-query associative recall: keys drawn (distinct) from the first half
  of the vocabulary without token 0, values from the second half; the key-value block comes first,
  then the query region, which is all 0 except that every key appears once, at even offsets drawn
  from a power law (short gaps more likely); the target at a query key is its value.
- The needle task follows RULER's `niah_single_1`: a haystack of repeated noise sentences, one
  needle "the number for KEY is 7-DIGIT VALUE" inserted at a sentence boundary at a chosen depth,
  and a question about KEY at the end; the answer is the 7 digits. Depths are 40 evenly spaced
  points of [0, 1]. The default template is shorter than RULER's so that short byte-level contexts
  still leave room for the haystack; template="ruler" uses RULER's wording.
- Copying: random tokens, a separator, then the same tokens again (loss on the copy).
- Key needle: the needle task in MQAR's vocabulary, for models too small to read text: a haystack of
  key-range tokens, one (key, value) pair at a chosen depth (the only value-range token in the sequence),
  and the key again as the last token, whose target is the value. Nothing but the needle's own
  key is followed by a value, so the task is one association recalled across the haystack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttmem.data.tokenizers import ByteTokenizer, Tokenizer

IGNORE = -100
NEEDLE_DEPTHS = np.linspace(0.0, 1.0, 40)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_ADJECTIVES = (
    "quiet",
    "amber",
    "brave",
    "calm",
    "dusty",
    "eager",
    "faint",
    "gentle",
    "hollow",
    "icy",
    "jolly",
    "keen",
    "lucky",
    "misty",
    "noble",
    "odd",
    "proud",
    "rapid",
    "silver",
    "tidy",
)
_NOUNS = (
    "harbor",
    "falcon",
    "garden",
    "lantern",
    "meadow",
    "orchard",
    "pepper",
    "quartz",
    "river",
    "saddle",
    "tunnel",
    "violet",
    "willow",
    "anchor",
    "beacon",
    "canyon",
    "dagger",
    "ember",
    "fern",
)
TEMPLATES = {
    "compact": ("The number for {key} is {value}. ", "\nThe number for {key} is ", ""),
    "ruler": (
        "One of the special magic numbers for {key} is: {value}. ",
        "\nWhat is the special magic number for {key} mentioned in the provided text? "
        "The special magic number for {key} mentioned in the provided text is ",
        "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the numbers afterwards.\n",
    ),
}


def _shift(example: np.ndarray, answer_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) from a length-(T+1) example; targets kept only where the predicted token's
    position (in `example`) is in `answer_positions`."""
    targets = np.full(len(example), IGNORE, dtype=np.int64)
    targets[answer_positions] = example[answer_positions]
    return example[:-1].astype(np.int64), targets[1:]


def mqar_example(
    rng: np.random.Generator, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """One MQAR example: inputs [seq_len], targets [seq_len] (value at each query key, else -100)."""
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2
    if num_kv_pairs < 1 or space < num_kv_pairs:
        raise ValueError(
            f"seq_len={seq_len} cannot hold {num_kv_pairs} key-value pairs and their queries "
            f"(needs seq_len >= {4 * num_kv_pairs})"
        )
    half = vocab_size // 2
    if num_kv_pairs > half - 1:
        raise ValueError(f"vocab_size={vocab_size} has only {half - 1} distinct keys, asked {num_kv_pairs}")
    keys = rng.choice(np.arange(1, half), size=num_kv_pairs, replace=False)
    values = rng.integers(half, vocab_size, size=num_kv_pairs)
    example = np.zeros(seq_len + 1, dtype=np.int64)
    example[0:context:2], example[1:context:2] = keys, values
    gap_p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=gap_p / gap_p.sum())
    example[context + 2 * gaps] = keys
    targets = np.full(seq_len, IGNORE, dtype=np.int64)
    targets[context + 2 * gaps] = values  # predicted at the query key itself
    return example[:-1], targets


def key_needle_example(
    rng: np.random.Generator, seq_len: int, vocab_size: int, depth: float
) -> tuple[np.ndarray, np.ndarray]:
    """One key-needle example: inputs [seq_len], targets [seq_len] (the value at the last position, else
    -100). The haystack is drawn from the keys [1, vocab_size // 2) other than the needle's key; the
    needle (key, value) starts at position round(depth * (seq_len - 3)), so depth 0 is the first token and
    depth 1 ends the needle just before the query."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3 (needle key, value, query), got {seq_len}")
    half = vocab_size // 2
    if half < 3:
        raise ValueError(f"vocab_size must be >= 6 (two haystack keys besides the needle's), got {vocab_size}")
    key = int(rng.integers(1, half))
    value = int(rng.integers(half, vocab_size))
    others = np.delete(np.arange(1, half), key - 1)
    inputs = others[rng.integers(len(others), size=seq_len)].astype(np.int64)
    start = int(round(depth * (seq_len - 3)))
    inputs[start], inputs[start + 1], inputs[-1] = key, value, key
    targets = np.full(seq_len, IGNORE, dtype=np.int64)
    targets[-1] = value
    return inputs, targets


def copy_example(rng: np.random.Generator, seq_len: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens from [2, vocab), separator 1, the same tokens again (padded with 0 in front)."""
    n = seq_len // 2
    if n < 1 or vocab_size < 3:
        raise ValueError(f"copying needs seq_len >= 2 and vocab_size >= 3, got {seq_len}, {vocab_size}")
    payload = rng.integers(2, vocab_size, size=n)
    example = np.concatenate([np.zeros(seq_len - 2 * n, np.int64), payload, [1], payload]).astype(np.int64)
    return _shift(example, np.arange(len(example) - n, len(example)))


@dataclass
class NeedleExample:
    inputs: np.ndarray  # [seq_len]
    targets: np.ndarray  # [seq_len], the value's tokens at its positions, else -100
    key: str
    value: str
    depth: float  # requested depth in [0, 1]
    needle_start: int  # token offset of the needle in the example
    haystack_len: int  # tokens of haystack (needle excluded)


def needle_example(
    rng: np.random.Generator,
    seq_len: int,
    depth: float,
    tokenizer: Tokenizer | None = None,
    template: str = "compact",
) -> NeedleExample:
    """One needle-in-a-haystack example of exactly `seq_len` input tokens with the needle at `depth`."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if template not in TEMPLATES:
        raise ValueError(f"unknown needle template '{template}': expected one of {sorted(TEMPLATES)}")
    tok = tokenizer or ByteTokenizer()
    needle_t, question_t, preamble_t = TEMPLATES[template]
    key = f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]}-{_NOUNS[rng.integers(len(_NOUNS))]}"
    value = str(int(rng.integers(1_000_000, 10_000_000)))
    preamble = tok.encode(preamble_t).astype(np.int64)
    needle = tok.encode(needle_t.format(key=key, value=value)).astype(np.int64)
    question = tok.encode(question_t.format(key=key)).astype(np.int64)
    answer = tok.encode(value).astype(np.int64)
    budget = seq_len + 1 - len(preamble) - len(needle) - len(question) - len(answer)
    if budget < 0:
        raise ValueError(f"seq_len={seq_len} is too short for the needle task (needs > {seq_len - budget})")
    sentences = [tok.encode(s.strip() + ". ").astype(np.int64) for s in NOISE.split(".") if s.strip()]
    pieces, used = [], 0
    while used < budget:
        piece = sentences[len(pieces) % len(sentences)][: budget - used]
        pieces.append(piece)
        used += len(piece)
    bounds = np.cumsum([0] + [len(p) for p in pieces])
    cut = int(np.argmin(np.abs(bounds - depth * budget)))  # nearest sentence boundary to the depth
    haystack = pieces[:cut] + [needle] + pieces[cut:]
    example = np.concatenate([preamble, *haystack, question, answer])
    start = len(example) - len(answer)
    inputs, targets = _shift(example, np.arange(start, len(example)))
    return NeedleExample(inputs, targets, key, value, float(depth), len(preamble) + int(bounds[cut]), budget)


class SyntheticTask:
    """A named task that turns an RNG into (inputs, targets) of a fixed length."""

    def __init__(
        self,
        name: str,
        seq_len: int,
        vocab_size: int = 256,
        tokenizer: Tokenizer | None = None,
        num_kv_pairs: int | None = None,
        template: str = "compact",
    ) -> None:
        if name not in TASKS:
            raise ValueError(f"unknown synthetic task '{name}': expected one of {sorted(TASKS)}")
        self.name, self.seq_len, self.vocab_size = name, seq_len, vocab_size
        self.tokenizer, self.template = tokenizer, template
        self.num_kv_pairs = num_kv_pairs or max(1, min(seq_len // 8, vocab_size // 2 - 1))
        self.example(np.random.default_rng(0))  # validate the parameters once, up front

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.name == "mqar":
            return mqar_example(rng, self.seq_len, self.num_kv_pairs, self.vocab_size)
        if self.name == "copy":
            return copy_example(rng, self.seq_len, self.vocab_size)
        depth = float(NEEDLE_DEPTHS[rng.integers(len(NEEDLE_DEPTHS))])
        ex = needle_example(rng, self.seq_len, depth, self.tokenizer, self.template)
        return ex.inputs, ex.targets


TASKS = ("mqar", "needle", "copy")
