"""Tests of ``ttmem.memory``."""
