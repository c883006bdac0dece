"""Timing safety instruments: statistics (``stats``), a timing harness (``timing``), FLOP accounting
(``flops``, ``reference_layers``), model access (``backends``), a loopback serving engine (``serving``, its
HTTP ``server`` and ``client``), a PROMPTPEEK-style attack (``attack``) and the model timing audit (``audit``)."""
