"""Shared by the tests, not tests themselves: inputs, independent references, tiny models, tools."""
