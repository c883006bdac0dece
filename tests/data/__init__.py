"""Tests of ``ttmem.data``."""
