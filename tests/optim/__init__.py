"""Tests of ``ttmem.optim``."""
