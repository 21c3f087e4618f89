"""Hydra-facing layer: the typed schema, validation, and builders from a composed config.

This is the only part of segdense (with tools/) that knows about configuration objects; everything
it builds takes plain arguments.
"""
