"""`python -m ttmem ...` (also what `torchrun -m ttmem ...` runs)."""

from ttmem.cli import main

raise SystemExit(main())
