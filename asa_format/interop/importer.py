"""``asa import``: detect the kind of a steering file from its content and write a bundle."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asa_format.errors import AsaError, ConversionError
from asa_format.format.contents import BundleContents
from asa_format.interop.binding import ImportBinding, make_contents, safe_name
from asa_format.interop.gguf_cv import GGUF_MAGIC, read_control_vector
from asa_format.interop.svec import MAX_SVEC_BYTES, load_json, looks_like_svec, parse_svec

__all__ = ["KINDS", "detect_kind", "import_file", "import_source"]

KINDS = ("gguf", "svec")


def detect_kind(path: str | os.PathLike[str]) -> str:
    """``"gguf"`` or ``"svec"``, from the bytes (the file name is not used)."""
    p = Path(path)
    if not p.is_file():
        raise AsaError(
            f"{str(p)!r} is not a file",
            code="IO_ERROR",
            hint="pass a .gguf control vector or a .svec file",
        )
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head == GGUF_MAGIC:
        return "gguf"
    if p.stat().st_size <= MAX_SVEC_BYTES and head.lstrip()[:1] == b"{":
        data = p.read_bytes()
        try:
            if looks_like_svec(load_json(data)):
                return "svec"
        except AsaError:  # JSON that names the .svec members but is malformed: refused as .svec
            if b'"directions"' in data and b'"model_type"' in data:
                return "svec"
    raise ConversionError(
        f"{str(p)!r} is neither a GGUF control vector nor an activation-steering .svec file",
        code="IMPORT_UNKNOWN_KIND",
        hint="repeng and steering-vectors objects are imported from Python: asa_format.interop.from_repeng / from_steering_vectors",
    )


def import_source(
    path: str | os.PathLike[str],
    binding: ImportBinding | None = None,
    *,
    name: str | None = None,
    coefficient: float = 1.0,
    card: bool = True,
) -> BundleContents:
    """Bundle contents for the steering file at ``path``."""
    kind = detect_kind(path)
    binding = binding or ImportBinding()
    name = name or safe_name(Path(path).stem)
    meta: dict[str, Any]
    if kind == "gguf":
        hint, dirs, meta = read_control_vector(path)
        source = "llama.cpp control vector (GGUF)"
    else:
        hint, dirs, meta = parse_svec(load_json(Path(path).read_bytes()))
        source = "activation-steering .svec"
    return make_contents(
        name,
        dirs,
        binding,
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

    return save_bundle(
        import_source(source, binding, name=name, coefficient=coefficient), destination, force=force
    )
