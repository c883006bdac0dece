"""Tests of ``ttmem.layers``."""
