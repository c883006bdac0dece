"""`python -m ttmem ...` (also what `torchrun -m ttmem ...` runs)."""

import sys

try:
    from ttmem.cli import main
except KeyboardInterrupt:  # Ctrl-C before the command's own error boundary exists
    print("ttmem: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
