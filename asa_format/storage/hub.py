"""Bundles on the Hugging Face hub: ``org/name@revision`` references.

``load_bundle("org/name@<commit>")`` (and
``attach``) resolve the reference with ``huggingface_hub.snapshot_download``
(revision pinned: a 40-hex commit, or any revision together with an
``expected_digest``), copy the bundle's files out of the hub cache into a
private temporary directory (the cache stores them as symbolic links into its
blob store, which a bundle reader refuses), and load that copy with every
check: sizes, hashes, profiles, the pinned root digest and, when keys are
given, the signature. Nothing from the hub cache is trusted beyond the bytes.
``local_files_only`` (or ``HF_HUB_OFFLINE=1``) never touches the network.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from asa_format import constants as C
from asa_format.errors import BundleError, UsageError
from asa_format.storage.inputs import open_input

__all__ = [
    "HUB_REFERENCE",
    "download_bundle",
    "is_hub_reference",
    "load_from_hub",
    "parse_hub_reference",
]

HUB_REFERENCE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})@(?P<rev>[A-Za-z0-9][A-Za-z0-9_./-]{0,127})\Z"
)
COMMIT = re.compile(r"^[0-9a-f]{40}\Z")
_NAMES = re.compile(
    r"^(manifest\.json|vectors\.safetensors|scaler\.onnx|router\.onnx|probe_(0|[1-9][0-9]{0,3})\.onnx|interventions\.safetensors|README\.md|model\.sig)\Z"
)
_MAX_COPY = C.MAX_VECTORS_BYTES
T = TypeVar("T")


def _bad(message: str, hint: str) -> BundleError:
    return BundleError(message, code="HUB_REFERENCE", hint=hint)


def is_hub_reference(value: Any) -> bool:
    """True for ``org/name@revision`` strings that are not an existing local path."""
    if isinstance(value, os.PathLike):  # attach() passes Path(reference)
        value = os.fspath(value)
    return (
        isinstance(value, str)
        and HUB_REFERENCE.match(value) is not None
        and not os.path.exists(value)
    )


def parse_hub_reference(ref: str) -> tuple[str, str]:
    m = HUB_REFERENCE.match(ref)
    if m is None or ".." in ref:
        raise _bad(
            f"{ref!r} is not a hub reference",
            "write org/name@revision, e.g. org/bundle@<40-hex commit>",
        )
    return m.group("repo"), m.group("rev")


def download_bundle(
    ref: str,
    destination: str | os.PathLike[str],
    *,
    expected_digest: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Resolve ``ref`` and copy the bundle files as regular files into ``destination`` (new)."""
    repo, revision = parse_hub_reference(ref)
    if not COMMIT.match(revision) and expected_digest is None:
        raise _bad(
            f"revision {revision!r} of {repo} is not a commit: a branch or tag can move",
            "pin a 40-hex commit (org/name@<sha>) or pass expected_digest",
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError(
            'hub references need huggingface_hub, which is not installed: pip install "asa-format[hub]"',
            code="EXTRA_MISSING",
        ) from exc
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        snapshot = Path(
            snapshot_download(
                repo_id=repo,
                revision=revision,
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                local_files_only=local_files_only,
                allow_patterns=[
                    "manifest.json",
                    "*.safetensors",
                    "*.onnx",
                    "README.md",
                    "model.sig",
                ],
            )
        )
    except Exception as exc:  # huggingface_hub raises many types (offline, not found, HTTP)
        raise _bad(
            f"cannot resolve {ref!r}: {type(exc).__name__}: {str(exc)[:200]}",
            "check the repository, the revision and the network (or the local cache)",
        ) from None
    dest = Path(destination)
    dest.mkdir(mode=0o700)
    store = snapshot.parent.parent  # the cache's repository folder (snapshots/, blobs/)
    for entry in sorted(os.scandir(snapshot), key=lambda e: e.name):
        if not _NAMES.match(entry.name):
            continue  # other repository files are not part of the bundle
        real = Path(os.path.realpath(entry.path))
        if (
            not (real.is_relative_to(store.resolve()) or real.is_relative_to(snapshot.resolve()))
            or not real.is_file()
        ):
            raise _bad(
                f"{entry.name} in the hub snapshot points outside the cache ({real})",
                "clear the hub cache and download again",
            )
        if real.stat().st_size > _MAX_COPY:
            raise BundleError(
                f"{entry.name} is over {_MAX_COPY} bytes",
                code="FILE_TOO_LARGE",
                file=entry.name,
                hint="see the spec's size caps",
            )
        _copy_bounded(real, dest / entry.name)
    return dest


def _copy_bounded(source: Path, target: Path) -> None:
    """Copy a regular file of at most ``_MAX_COPY`` bytes (never a FIFO or device swapped in)."""
    with (
        open_input(source, what="a hub cache file", cap=_MAX_COPY) as (fd, _),
        open(target, "xb") as out,
    ):
        copied = 0
        while chunk := os.read(fd, 1 << 20):
            copied += len(chunk)
            if copied > _MAX_COPY:  # it grew while it was copied
                raise BundleError(
                    f"{target.name} grew past {_MAX_COPY} bytes while it was copied",
                    code="FILE_TOO_LARGE",
                    file=target.name,
                    hint="clear the hub cache and download again",
                )
            out.write(chunk)


def load_from_hub(ref: str, loader: Callable[..., T], **kwargs: Any) -> T:
    """Download ``ref``, load it with ``loader(path, **kwargs)`` and delete the copy."""
    cache_dir = kwargs.pop("cache_dir", None)
    local_files_only = kwargs.pop("local_files_only", None)
    with tempfile.TemporaryDirectory(prefix="asa-hub-") as tmp:
        path = download_bundle(
            ref,
            Path(tmp) / "bundle",
            expected_digest=kwargs.get("expected_digest"),
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        result = loader(path, **kwargs)
    if hasattr(result, "path"):
        result.path = None  # the copy is gone; the bundle lives in memory
    return result
