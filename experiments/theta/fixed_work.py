"""Claim 2 (fixed work per token): a θ-memory model's decode time depends neither on content nor on length.

Same measurement as storage_leaks.py on a θ-memory language model (fixed-size state, one gradient step
per token). Prints the audit tables and a summary; saves runs/theta/fixed_work.png/.json.

    PYTHONPATH=src python experiments/theta/fixed_work.py [--model theta_lm-tiny]
"""

from _common import backend, parser, setup
from _decode_timing import add_args, measure

if __name__ == "__main__":
    p = parser(__doc__.splitlines()[0])
    add_args(p)
    args = p.parse_args()
    out = setup(args)
    model, label = backend("theta", args.model)
    measure(model, label, out, args, "fixed_work")
