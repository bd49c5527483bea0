"""``python -m asa_format``: the ``asa`` command."""

from __future__ import annotations

from asa_format.cli.main import main

if __name__ == "__main__":  # pragma: no cover
    main()
