"""The command line: every click command of the project lives in this package.

``asa`` is :func:`asa_format.cli.main.main` (``python -m asa_format.cli``);
``asa-convert`` is :func:`asa_format.cli.convert.main`. Each command is a thin
layer: it parses options, calls the library and hands the result to the text
or JSON reporter (:mod:`asa_format.cli.report`).
"""

from __future__ import annotations

from asa_format.cli.main import cli, main

__all__ = ["cli", "main"]
