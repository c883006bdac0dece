"""Timing safety instruments: statistics (``stats``), a timing harness (``timing``), FLOP accounting
(``flops``, ``reference_layers``), model access (``backends``), a loopback serving engine (``server``),
a PROMPTPEEK-style attack (``attack``) and the model timing audit (``audit``)."""
