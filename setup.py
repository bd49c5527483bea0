"""The optional C extension: the fast path's one-row lane (asa_format/graphs/_lane.c).

Everything else is in pyproject.toml. Without a C compiler the build leaves the
extension out and the package decides with its Python lane (asa_format.graphs.native).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup

# IEEE 754 as written: no contraction into fused multiply-adds, no fast-math
FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(
    ext_modules=[
        Extension(
            "asa_format.graphs._lane",
            ["asa_format/graphs/_lane.c"],
            extra_compile_args=FLAGS,
            optional=True,
        )
    ]
)
