"""Converters into the asa-bundle format.

* :func:`convert_legacy`: a legacy ``asa_assets/`` directory (config.json,
  steering_vectors.npz, scaler/router/probes pickles) -> bundle. Pickles are
  read by a restricted, opcode-level reader (``safe_pickle``): no pickled
  code ever runs.
* :func:`build_bundle`: fitted scikit-learn objects in memory -> bundle.

Both export the graphs with skl2onnx and refuse to write a bundle that does
not reproduce the source's decisions.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_bundle", "convert_legacy", "read_legacy_bundle"]


def __getattr__(name: str) -> Any:  # imported lazily: scikit-learn is heavy
    if name == "convert_legacy":
        from .convert import convert_legacy

        return convert_legacy
    if name == "build_bundle":
        from .build import build_bundle

        return build_bundle
    if name == "read_legacy_bundle":
        from .legacy import read_legacy_bundle

        return read_legacy_bundle
    raise AttributeError(name)
