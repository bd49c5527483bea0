"""The root digest of a bundle.

The root digest is ``"sha256:" + sha256(manifest bytes)``. The manifest pins
every other file by size and sha256, so the root digest covers the whole
bundle: pinning it pins every byte a loader will use.
"""

from __future__ import annotations

import hashlib

from asa_format.errors import UsageError

__all__ = ["DIGEST_PREFIX", "root_digest"]

DIGEST_PREFIX = "sha256:"


def root_digest(manifest_bytes: bytes) -> str:
    """Return the root digest of a bundle whose manifest is ``manifest_bytes``."""
    if not isinstance(manifest_bytes, (bytes, bytearray, memoryview)):
        raise UsageError(
            f"manifest_bytes must be bytes, not {type(manifest_bytes).__name__}",
            hint="pass the bytes of manifest.json",
        )
    return DIGEST_PREFIX + hashlib.sha256(manifest_bytes).hexdigest()
