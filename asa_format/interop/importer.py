"""``asa import``: detect the kind of a steering file from its content and write a bundle.

The source is opened once (:mod:`asa_format.storage.inputs`: a regular file under the
size cap, never a FIFO or a device), its kind detected from the first bytes,
and the same open file parsed: a file swapped between detection and parsing
cannot be read as another kind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from asa_format.errors import AsaError, ConversionError
from asa_format.format.contents import BundleContents
from asa_format.interop.binding import ImportBinding, make_contents, safe_name
from asa_format.interop.gguf_cv import GGUF_MAGIC, MAX_GGUF_BYTES, read_control_vector_fd
from asa_format.interop.svec import MAX_SVEC_BYTES, load_json, looks_like_svec, parse_svec
from asa_format.storage.inputs import check_path_arg, open_input

__all__ = ["KINDS", "detect_kind", "import_file", "import_source"]

KINDS = ("gguf", "svec")
_CAP = max(MAX_GGUF_BYTES, MAX_SVEC_BYTES)


def _read_all(fd: int, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = os.pread(fd, min(size - got, 1 << 20), got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _unknown(path: Path) -> ConversionError:
    return ConversionError(
        f"{str(path)!r} is neither a GGUF control vector nor an activation-steering .svec file",
        code="IMPORT_UNKNOWN_KIND",
        hint="repeng and steering-vectors objects are imported from Python: asa_format.interop.from_repeng / from_steering_vectors",
    )


def _kind_of(fd: int, size: int, path: Path) -> tuple[str, bytes | None]:
    """The kind, and for a .svec file its bytes (read from the same descriptor)."""
    head = os.pread(fd, 64, 0)
    if head[:4] == GGUF_MAGIC:
        return "gguf", None
    if head.lstrip()[:1] == b"{" and size > MAX_SVEC_BYTES:  # JSON, too large for a .svec
        raise AsaError(
            f"the steering file {str(path)!r} is {size} bytes, over the cap of a .svec file "
            f"({MAX_SVEC_BYTES})",
            code="INPUT_TOO_LARGE",
            file=str(path),
            hint="an activation-steering .svec file is at most a few tens of megabytes",
        )
    if head.lstrip()[:1] == b"{":
        data = _read_all(fd, size)
        try:
            if looks_like_svec(load_json(data)):
                return "svec", data
        except ConversionError:  # JSON that names the .svec members but is malformed: a .svec
            if b'"directions"' in data and b'"model_type"' in data:
                return "svec", data
    raise _unknown(path)


def detect_kind(path: str | os.PathLike[str]) -> str:
    """``"gguf"`` or ``"svec"``, from the bytes (the file name is not used)."""
    p = check_path_arg(path, "the steering file")
    with open_input(p, what="the steering file", cap=_CAP) as (fd, size):
        return _kind_of(fd, size, p)[0]


def _read_source(p: Path) -> tuple[str, str | None, dict[int, np.ndarray], dict[str, Any]]:
    with open_input(p, what="the steering file", cap=_CAP) as (fd, size):
        kind, data = _kind_of(fd, size, p)
        if kind == "gguf":
            return (kind, *read_control_vector_fd(fd, size, p))
    assert data is not None
    return (kind, *parse_svec(load_json(data)))


def import_source(
    path: str | os.PathLike[str],
    binding: ImportBinding | None = None,
    *,
    name: str | None = None,
    coefficient: float = 1.0,
    card: bool = True,
) -> BundleContents:
    """Bundle contents for the steering file at ``path``."""
    from asa_format.interop.binding import check_import_args

    p = check_path_arg(path, "the steering file")
    check_import_args(binding, name, coefficient, card)
    kind, hint, dirs, meta = _read_source(p)
    source = "llama.cpp control vector (GGUF)" if kind == "gguf" else "activation-steering .svec"
    return make_contents(
        name or safe_name(p.stem),
        dirs,
        binding or ImportBinding(),
        model_hint=hint,
        source=source,
        metadata=meta,
        coefficient=coefficient,
        card=card,
    )


def import_file(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    binding: ImportBinding | None = None,
    *,
    name: str | None = None,
    coefficient: float = 1.0,
    force: bool = False,
) -> Path:
    """Import ``source`` and write the bundle at ``destination`` (atomically)."""
    from asa_format.storage.writer import save_bundle

    check_path_arg(destination, "the destination")
    return save_bundle(
        import_source(source, binding, name=name, coefficient=coefficient), destination, force=force
    )
