"""Tests of ``ttmem.eval``."""
