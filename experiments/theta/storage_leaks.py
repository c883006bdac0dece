"""Claim 1 (storage leaks): a key/value-cache model's decode time depends on what is stored.

Measures one decode step of a KV-cache language model after prefixes of equal length and different
content, after prefixes of different lengths, and a prefill through a shared prefix cache (repeated vs
novel prompt). Prints the audit tables and a summary; saves runs/theta/storage_leaks.png/.json.

    PYTHONPATH=src python experiments/theta/storage_leaks.py [--model transformer-tiny]
"""

from _common import backend, parser, setup
from _decode_timing import add_args, measure

if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    add_args(p)
    args = p.parse_args()
    out = setup(args)
    model, label = backend("attention", args.model)
    measure(model, label, out, args, "storage_leaks")
