"""Write bundles atomically and deterministically.

``save_bundle`` writes every file into a fresh temporary directory next to the
destination, fsyncs them, checks the result with the same reader that
``load_bundle`` uses, and only then moves the directory into place
(``asa_format.destination``: an existing destination is replaced only if it
is an asa bundle, in one atomic exchange where the OS offers one). A failure
at any point removes the temporary directory: nothing is left half-written
at the destination. The same contents always give byte-identical
files (canonical JSON, sorted tensors, no timestamps).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asa_format import __version__
from asa_format import constants as C
from asa_format.destination import Staging, check_replaceable, commit, recover
from asa_format.errors import AsaError, BundleError, UsageError
from asa_format.manifest import (
    AsaManifest,
    DomainEntry,
    FileEntry,
    LayerRef,
    Manifest,
    ModelBinding,
    Producer,
    Provenance,
    Steering,
    probe_file_name,
)
from asa_format.reader import read_bundle_dir
from asa_format.safetensors_profile import serialize_vectors

if TYPE_CHECKING:
    from asa_format.intervention_bundle import InterventionContents

__all__ = ["BundleContents", "bundle_files", "check_destination", "contents_of", "save_bundle"]

# A hook for fault-injection tests: called with each file name after it is
# written into the temporary directory.
_after_file_written: Callable[[str], None] | None = None


@dataclass
class BundleContents:
    """Everything a bundle holds, in memory."""

    model: ModelBinding
    layer: int
    steering: Steering
    domains: Sequence[str]
    vectors: Mapping[str, np.ndarray]  # float32 [H] per domain plus "global"
    scaler: bytes  # scaler.onnx
    router: bytes  # router.onnx
    probes: Mapping[str, bytes] = field(default_factory=dict)  # domain name -> probe graph
    provenance: Provenance | None = None
    producer: Producer | None = None  # None: this library; a loaded bundle keeps its own


def contents_of(
    manifest: Manifest, vectors: Mapping[str, np.ndarray], graphs: Mapping[str, bytes]
) -> BundleContents:
    """The :class:`BundleContents` of a checked bundle (manifest, vectors, graph bytes).

    The inverse of :func:`bundle_files`: saving the result writes the same
    bytes. A manifest of a newer minor format version is refused: it may
    carry members this version does not know, and saving would drop them.
    """
    major, _, minor = manifest.format_version.partition(".")
    if (int(major), int(minor)) > (C.FORMAT_MAJOR, C.FORMAT_MINOR):
        raise UsageError(
            f"the bundle is format {manifest.format_version}, newer than this library's "
            f"{C.FORMAT_VERSION}; saving it would drop what this version does not know",
            file=C.MANIFEST_FILE,
            hint="upgrade asa-format to edit this bundle",
        )
    if manifest.requires or manifest.interventions or not isinstance(manifest, AsaManifest):
        # format 1.1 features that BundleContents cannot hold
        raise UsageError(
            f"the bundle uses format {manifest.format_version} features "
            f"({', '.join(sorted(manifest.requires)) or 'interventions'}) that BundleContents "
            "cannot hold; saving it would drop them",
            file=C.MANIFEST_FILE,
            hint="use asa_format.load_interventions(path).to_contents(), an InterventionContents",
        )
    return asa_contents_of(manifest, vectors, graphs)


def asa_contents_of(
    manifest: AsaManifest, vectors: Mapping[str, np.ndarray], graphs: Mapping[str, bytes]
) -> BundleContents:
    """The asa intervention of a checked 1.x manifest as :class:`BundleContents`
    (the 1.1 writer puts it back beside the other interventions)."""
    probes = {d.name: graphs[d.probe] for d in manifest.domains if d.probe is not None}
    return BundleContents(
        model=manifest.model,
        layer=manifest.layer.index,
        steering=manifest.steering,
        domains=list(manifest.domain_names),
        vectors={name: np.array(vec, dtype=np.float32) for name, vec in vectors.items()},
        scaler=graphs[C.SCALER_FILE],
        router=graphs[C.ROUTER_FILE],
        probes=probes,
        provenance=manifest.provenance,
        producer=manifest.producer,
    )


def bundle_files(contents: BundleContents) -> tuple[Manifest, dict[str, bytes]]:
    """Return the manifest and the bytes of every file of ``contents``."""
    unknown = sorted(set(contents.probes) - set(contents.domains))
    if unknown:
        raise BundleError(
            f"probes given for unknown domains {unknown}",
            code="DOMAIN_MISMATCH",
            hint="probe keys must be domain names",
        )
    files: dict[str, bytes] = {
        C.VECTORS_FILE: serialize_vectors(contents.vectors),
        C.SCALER_FILE: contents.scaler,
        C.ROUTER_FILE: contents.router,
    }
    domains: list[DomainEntry] = []
    for i, name in enumerate(contents.domains):
        probe = contents.probes.get(name)
        if probe is None:
            domains.append(DomainEntry(name=name, probe=None))
        else:
            fname = probe_file_name(i)
            files[fname] = probe
            domains.append(DomainEntry(name=name, probe=fname))
    manifest = Manifest(
        producer=contents.producer or Producer(C.PRODUCER_NAME, __version__),
        model=contents.model,
        layer=LayerRef(index=int(contents.layer)),
        steering=contents.steering,
        domains=tuple(domains),
        files={
            name: FileEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, data in sorted(files.items())
        },
        provenance=contents.provenance,
    )
    files[C.MANIFEST_FILE] = manifest.to_bytes()
    return manifest, files


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_destination(destination: str | os.PathLike[str], *, force: bool = False) -> list[str]:
    """Finish what dead runs left at ``destination``, then refuse it unless it may be written.

    A missing destination may be written; an existing one only with ``force``
    and only if it is an asa bundle (see ``asa_format.destination``). Returns
    notes for a person about what was recovered.
    """
    dest = Path(destination)
    notes = recover(dest)
    if dest.exists() or dest.is_symlink():
        if not force:
            raise UsageError(
                f"destination {str(dest)!r} already exists",
                code="DESTINATION_EXISTS",
                file=str(dest),
                hint="choose another destination, or pass force=True to replace a bundle",
            )
        check_replaceable(dest)
    return notes


def save_bundle(
    contents: BundleContents | InterventionContents,
    destination: str | os.PathLike[str],
    *,
    force: bool = False,
    check: bool = True,
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``contents`` as a bundle directory at ``destination``, atomically.

    An existing destination is an error unless ``force`` is given and it is
    an asa bundle (a directory whose manifest parses and that holds nothing
    else); it is then replaced in one atomic exchange where the OS offers one.
    With ``check`` (the default) the written bundle is validated before it is
    moved into place. ``before_commit`` is called with the temporary
    directory after the check; if it raises, nothing is written at the
    destination (the converter's parity self-check runs there).

    Wrong argument types, and contents with a wrong member type or a
    non-finite number (a NaN coefficient, an infinite alpha), raise a coded
    ``UsageError`` before anything is written.
    """
    from asa_format.argcheck import bool_arg, callable_arg, path_arg
    from asa_format.contents_check import check_contents

    check_contents(contents)
    dest = path_arg(destination, "destination")
    bool_arg(force, "force")
    bool_arg(check, "check")
    callable_arg(before_commit, "before_commit")
    check_destination(dest, force=force)
    if isinstance(contents, BundleContents):
        _, files = bundle_files(contents)
    else:  # format 1.1: several interventions, model card
        from asa_format.intervention_bundle import intervention_files

        _, files = intervention_files(contents)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Staging(dest)
    except OSError as exc:
        raise AsaError(
            f"cannot create a directory in {str(parent)!r}: {exc.strerror}",
            code="IO_ERROR",
            hint="check permissions and free space",
        ) from exc
    tmp = staging.tmp
    try:
        # the manifest last: a reader never sees a manifest without its files
        for name in sorted(files, key=lambda n: (n == C.MANIFEST_FILE, n)):
            _write_file(tmp / name, files[name])
            if _after_file_written is not None:
                _after_file_written(name)
        os.chmod(tmp, 0o755)
        _fsync_dir(tmp)
        if check:
            result = read_bundle_dir(tmp)
            if result.problems:
                raise BundleError.from_problems(result.problems)
        if before_commit is not None:
            before_commit(tmp)
        replace = dest.exists() or dest.is_symlink()
        if replace:
            check_replaceable(dest)  # again: it may have changed while we wrote
        commit(staging, replace=replace)
        _fsync_dir(parent)
    except OSError as exc:
        staging.discard()
        raise AsaError(
            f"writing the bundle to {str(dest)!r} failed: {exc.strerror or exc}",
            code="IO_ERROR",
            hint="check free space and permissions; nothing was written at the destination",
        ) from exc
    except BaseException:
        staging.discard()
        raise
    return dest
