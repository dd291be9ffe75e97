"""Errors shared across training modules, kept at the bottom of the import graph."""

from __future__ import annotations


class ExportError(RuntimeError):
    """A bundle that cannot be written or would not serve what PyTorch computes."""
