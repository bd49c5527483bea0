"""IBM activation-steering ``.svec`` files: JSON ``{model_type, directions, explained_variances}``.

``directions`` maps a layer index (a JSON key, decimal) to a list of floats.
activation-steering's ``LeashLayer`` adds ``directions[N]`` to the *input* of
decoder block N, which is the output of block N-1: the import steers block
N-1 (key 0, the embedding output, has no block and is dropped, recorded in
the provenance). The layers to steer, the strength, the norm-preserving
rescaling and CAST conditions are arguments of ``steer()``, never saved: an
import steers every layer the file has, at coefficient 1, and keeps
``explained_variances`` as provenance metadata.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.errors import ConversionError
from asa_format.format.jsonio import DuplicateKeyError, NonFiniteError, loads_strict
from asa_format.format.textrules import is_label

__all__ = ["MAX_SVEC_BYTES", "MAX_SVEC_VALUES", "looks_like_svec", "parse_svec"]

# A .svec of a 126-block model with hidden size 16384 is about 40 MB of JSON
# (2M numbers); the caps leave room for that and bound the memory of parsing.
MAX_SVEC_BYTES = 64 << 20
MAX_SVEC_VALUES = 1 << 22  # numbers in one file (counted before parsing)
# a block key: canonical decimal, nothing before or after ("2\n", " 2", "02" refused)
_BLOCK = re.compile(r"0|[1-9][0-9]{0,4}")  # used with fullmatch


def _bad(message: str) -> ConversionError:
    return ConversionError(message, code="IMPORT_INVALID", hint="the .svec file is malformed")


def looks_like_svec(doc: Any) -> bool:
    return isinstance(doc, dict) and "directions" in doc and "model_type" in doc


def load_json(data: bytes) -> Any:
    if len(data) > MAX_SVEC_BYTES:
        raise _bad(f"the file is {len(data)} bytes, over the cap of {MAX_SVEC_BYTES}")
    # every number of a list is followed by "," or "]": a bound on the values before parsing
    values = data.count(b",") + data.count(b"]")
    if values > MAX_SVEC_VALUES:
        raise _bad(f"the file holds up to {values} values, over the cap of {MAX_SVEC_VALUES}")
    try:
        return loads_strict(data.decode("utf-8"))
    except DuplicateKeyError as exc:
        raise _bad(f"the JSON repeats the key {exc.key!r}") from None
    except NonFiniteError as exc:
        raise _bad(f"the JSON holds {exc.literal}") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(f"not valid UTF-8 JSON: {str(exc)[:200]}") from None


def parse_svec(doc: Any) -> tuple[str | None, dict[int, np.ndarray], dict[str, Any]]:
    """Return ``(model_type, {block: float32 direction}, metadata)``."""
    if not looks_like_svec(doc):
        raise _bad("a .svec file is a JSON object with model_type and directions")
    unknown = sorted(set(doc) - {"model_type", "directions", "explained_variances"})
    if unknown:
        raise _bad(f"unknown members {unknown}")
    model_type = doc["model_type"]
    if model_type is not None and not is_label(model_type):
        raise _bad(
            f"model_type is {str(model_type)[:60]!r}, expected a model type "
            "(1..128 characters, no control characters)"
        )
    dirs = doc["directions"]
    if not isinstance(dirs, dict) or not dirs:
        raise _bad("directions must be a non-empty object: block -> list of floats")
    out: dict[int, np.ndarray] = {}
    for key, values in dirs.items():
        if not _BLOCK.fullmatch(key):  # JSON keys are strings; one spelling per block
            raise _bad(f"directions key {key[:20]!r} is not a block number (canonical decimal)")
        if not isinstance(values, list) or not 1 <= len(values) <= C.MAX_HIDDEN_SIZE:
            raise _bad(f"directions[{key}] must be a list of 1..{C.MAX_HIDDEN_SIZE} numbers")
        if not all(type(v) in (int, float) for v in values):
            raise _bad(f"directions[{key}] holds a value that is not a number")
        arr = np.asarray(values, dtype=np.float64)
        with np.errstate(over="ignore"):
            overflow = not np.isfinite(arr).all() or not np.isfinite(arr.astype(np.float32)).all()
        if overflow:
            raise _bad(f"directions[{key}] overflows float32")
        out[int(key)] = arr.astype(np.float32)
    meta: dict[str, Any] = {
        "svec.layer_mapping": "directions[N] steers the input of block N = the output of block N-1"
    }
    if 0 in out:
        del out[0]
        meta["svec.dropped_layers"] = [0]
        if not out:
            raise _bad(
                "the file steers only layer 0 (the embedding output), which no decoder block output reaches"
            )
    out = {k - 1: v for k, v in out.items()}
    ev = doc.get("explained_variances")
    if isinstance(ev, dict) and all(
        _BLOCK.fullmatch(k) and type(v) in (int, float) and math.isfinite(v) for k, v in ev.items()
    ):
        meta["explained_variances"] = {str(k): float(v) for k, v in ev.items()}
    elif ev is not None:
        meta["explained_variances_dropped"] = "not an object of block numbers to finite numbers"
    return model_type, dict(sorted(out.items())), meta
