"""Regression guard for the symplectic benchmarks: compare a new run's JSON with a committed baseline.

    PYTHONPATH=src python benchmarks/symplectic/regress.py --baseline A.json --latest B.json

The same as `ttmem bench regress`; the comparison lives in `ttmem.eval.regress` (see its docstring for the
rules). Prints a table; exits 1 on any failure or refusal, 0 otherwise.
"""

from __future__ import annotations

import sys

from ttmem.cli import main as ttmem_main


def main(argv: list[str] | None = None) -> int:
    return ttmem_main(["bench", "regress", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
