"""``python -m asa_format.cli``: the ``asa`` command (signal handlers first, see ``asa_format.entry``)."""

from __future__ import annotations

from asa_format.entry import asa

if __name__ == "__main__":  # pragma: no cover
    asa()
