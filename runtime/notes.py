"""Warning categories of the runtime that need no torch (the CLI imports them)."""

from __future__ import annotations

__all__ = ["BindingNote"]


class BindingNote(UserWarning):
    """Not a problem, worth knowing: e.g. a local model directory matched the
    bundle's binding by config (type, layer count, hidden size) while its id
    differs from the one the bundle records."""
