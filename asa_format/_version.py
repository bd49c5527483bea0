"""The version of this library (its own module: low modules import it without the facade)."""

from __future__ import annotations

__version__ = "0.1.0"
