"""ttmem: test-time memory for sequence models.

One chunked engine (`ttmem.memory`) runs every memory rule — Titans, the MIRAS family,
ATLAS-style windows, the delta rule and linear attention — as a preset of four choices:
architecture, objective, retention and learner.
"""

__version__ = "0.1.0"
