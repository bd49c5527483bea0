"""A cache of extracted hidden states for ``asa fit --cache DIR``.

An entry is one ``.npz`` file (plain arrays, read with ``allow_pickle=False``)
named by the SHA-256 of its key: the model files' digests, the token ids of
every prompt (they fix the data and the rendering), the rendering itself,
the dtype, the device, the extraction mode and the torch / transformers
versions. The key is also stored inside the file and compared on reading;
an entry that does not match, cannot be read or has the wrong shapes is
ignored (and reported), never trusted. Entries are written to a temporary
file in the cache directory and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from asa_format.converters.fit_hidden import HiddenStates
from asa_format.format.jsonio import dumps_canonical

__all__ = ["cache_key", "read_cache", "write_cache"]

_PREFIX = "asa-fit-"


def cache_key(parts: Mapping[str, Any]) -> tuple[str, bytes]:
    """(hex digest, canonical bytes) of a key."""
    data = dumps_canonical(dict(parts))
    return hashlib.sha256(data).hexdigest(), data


def _path(directory: Path, digest: str) -> Path:
    return directory / f"{_PREFIX}{digest}.npz"


def read_cache(
    directory: Path, parts: Mapping[str, Any], shape: tuple[int, int], with_mean: bool
) -> tuple[HiddenStates | None, str | None]:
    """The cached states for ``parts`` (or None) and a note for a person, if any."""
    digest, key = cache_key(parts)
    path = _path(directory, digest)
    if not (path.exists() or path.is_symlink()):
        return None, None
    if path.is_symlink() or not path.is_file():
        return None, f"cache entry {path.name} is not a regular file; ignored"
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored_key = bytes(npz["key"].tobytes())
            last = np.array(npz["last"])
            mean = np.array(npz["mean"]) if "mean" in npz.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return None, f"cache entry {path.name} could not be read ({exc}); recomputed"
    blocks, rows = shape
    ok = (
        stored_key == key
        and last.dtype == np.float32
        and last.ndim == 3
        and last.shape[:2] == (blocks, rows)
        and bool(np.all(np.isfinite(last)))
        and (
            not with_mean
            or (mean is not None and mean.shape == last.shape and mean.dtype == np.float64)
        )
    )
    if not ok:
        return None, f"cache entry {path.name} does not match its key or shapes; recomputed"
    return HiddenStates(last=last, mean=mean if with_mean else None), None


def write_cache(directory: Path, parts: Mapping[str, Any], states: HiddenStates) -> str | None:
    """Store ``states``; returns a note when the entry could not be written (fitting goes on)."""
    digest, key = cache_key(parts)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_PREFIX}", suffix=".npz.tmp", dir=directory)
    except OSError as exc:
        return f"the cache directory {str(directory)!r} cannot be written ({exc.strerror}); nothing cached"
    try:
        with os.fdopen(fd, "wb") as f:
            arrays: dict[str, np.ndarray] = {
                "key": np.frombuffer(key, dtype=np.uint8),
                "last": states.last,
            }
            if states.mean is not None:
                arrays["mean"] = states.mean
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _path(directory, digest))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return f"the cache entry could not be written ({exc.strerror}); nothing cached"
    except BaseException:  # interrupted: leave no temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return None
