"""Tests of ``ttmem.security``."""
