"""Tests of ``ttmem.train``."""
