"""Layers shared by at least two model families."""
