"""Converters into the asa-bundle format.

* :func:`convert_legacy`: a legacy ``asa_assets/`` directory (config.json,
  steering_vectors.npz, scaler/router/probes pickles) -> bundle. Pickles are
  read by a restricted, opcode-level reader (``safe_pickle``): no pickled
  code ever runs.
* :func:`build_bundle`: fitted scikit-learn objects in memory -> bundle.
* :func:`fit`: a local model and labelled prompts -> bundle (``asa fit``).

Both export the graphs with skl2onnx and refuse to write a bundle that does
not reproduce the source's decisions.
"""

from __future__ import annotations

if __name__ != "asa_format.converters":  # pragma: no cover - guards against a second copy
    raise ImportError(
        f"{__name__!r} is the asa_format.converters package seen under another name; import asa_format.converters"
    )

from typing import Any

__all__ = ["build_bundle", "convert_legacy", "fit", "read_legacy_bundle"]


def __getattr__(name: str) -> Any:  # imported lazily: scikit-learn is heavy
    if name == "convert_legacy":
        from asa_format.converters.convert import convert_legacy

        return convert_legacy
    if name == "build_bundle":
        from asa_format.converters.build import build_bundle

        return build_bundle
    if name == "fit":
        from asa_format.converters.fitting import fit

        return fit
    if name == "read_legacy_bundle":
        from asa_format.converters.legacy import read_legacy_bundle

        return read_legacy_bundle
    raise AttributeError(name)
