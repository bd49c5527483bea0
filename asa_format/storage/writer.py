"""Write bundles atomically and deterministically.

``save_bundle`` writes every file into a fresh temporary directory next to the
destination, fsyncs them, checks the result with the same reader that
``load_bundle`` uses, and only then moves the directory into place
(``asa_format.storage.destination``: an existing destination is replaced only if it
is an asa bundle, in one atomic exchange where the OS offers one). A failure
at any point removes the temporary directory: nothing is left half-written
at the destination. The same contents always give byte-identical
files (canonical JSON, sorted tensors, no timestamps).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from asa_format import constants as C
from asa_format.errors import AsaError, BundleError, UsageError
from asa_format.format.contents import BundleContents, bundle_files, contents_of
from asa_format.storage.destination import (
    Staging,
    check_replaceable,
    commit,
    normalized,
    recover,
    write_new_file,
)
from asa_format.storage.reader import read_bundle_dir

__all__ = ["BundleContents", "bundle_files", "check_destination", "contents_of", "save_bundle"]

# A hook for fault-injection tests: called with each file name after it is
# written into the temporary directory.
_after_file_written: Callable[[str], None] | None = None


def _write_file(path: Path, data: bytes) -> None:
    write_new_file(path, data)  # O_EXCL | O_NOFOLLOW, mode 0644


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
    and only if it is an asa bundle (see ``asa_format.storage.destination``). Returns
    notes for a person about what was recovered.
    """
    dest = normalized(Path(destination))
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
    contents: BundleContents,
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
    from asa_format.format.contents_check import check_contents

    check_contents(contents)
    dest = normalized(path_arg(destination, "destination"))
    bool_arg(force, "force")
    bool_arg(check, "check")
    callable_arg(before_commit, "before_commit")
    check_destination(dest, force=force)
    if not isinstance(contents, BundleContents):
        raise UsageError(
            f"save_bundle() needs a BundleContents, got {type(contents).__name__}",
            hint="build one with asa_format.BundleContents(...) or read_bundle_contents(path)",
        )
    _, files = bundle_files(contents)
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
    except FileExistsError as exc:  # another writer created the destination meanwhile
        staging.discard()
        raise UsageError(
            f"destination {str(dest)!r} appeared while the bundle was written; it was left alone",
            code="DESTINATION_EXISTS",
            file=str(dest),
            hint="choose another destination, or pass force=True to replace a bundle",
        ) from exc
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
    return Path(destination)
