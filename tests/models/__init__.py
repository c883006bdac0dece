"""Tests of ``ttmem.models``."""
