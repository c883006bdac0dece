"""Tests of ``ttmem.hf``."""
