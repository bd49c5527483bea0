"""The files a signature covers: directory walk, no-follow hashing, root digest.

Every regular file of the bundle directory except the root ``model.sig`` is
covered; symbolic links and special files are refused. Files are opened with
:func:`asa_format.storage.reader.open_regular`, the reader's no-follow access.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from asa_format import constants as C
from asa_format.errors import BundleError, Problem, SignatureError
from asa_format.format.digest import root_digest
from asa_format.storage.inputs import read_input
from asa_format.storage.reader import open_regular, size_cap

__all__ = [
    "checked_bundle_dir",
    "default_signature_path",
    "hash_bundle_files",
    "is_inside",
    "list_bundle_files",
    "path_key",
    "root_digest_of_dir",
    "sha256_file",
]

_CHUNK = 1 << 20


def checked_bundle_dir(bundle_dir: str | os.PathLike[str]) -> Path:
    path = Path(bundle_dir)
    if path.is_symlink():
        raise BundleError(
            "the bundle directory is a symbolic link",
            code="PATH_SYMLINK",
            file=str(path),
            hint="pass the real directory",
        )
    if not path.is_dir():
        raise BundleError(
            "the bundle directory does not exist or is not a directory",
            code="BUNDLE_NOT_FOUND",
            file=str(path),
            hint="pass the path of a bundle directory",
        )
    return path


def default_signature_path(bundle_dir: str | os.PathLike[str]) -> Path:
    """``<bundle>/model.sig``."""
    return Path(bundle_dir) / C.SIGNATURE_FILE


MAX_DEPTH = 8  # directory levels below the bundle that a signature may cover


def list_bundle_files(bundle: Path) -> list[str]:
    """Relative POSIX names of every regular file under ``bundle``, except the root signature.

    The walk is iterative and bounded: at most ``MAX_FILES + 2`` entries in all
    and ``MAX_DEPTH`` directory levels (an asa bundle is flat; model_signing
    may cover subdirectories). Links and special files are refused.
    """
    names: list[str] = []
    budget = C.MAX_FILES + 2

    def walk(root: Path) -> None:
        nonlocal budget
        stack: list[tuple[Path, str, int]] = [(root, "", 0)]
        while stack:
            directory, prefix, depth = stack.pop()
            with os.scandir(directory) as it:
                entries = []
                for entry in it:
                    entries.append(entry)
                    budget -= 1
                    if budget < 0:
                        raise SignatureError(
                            f"the bundle holds more than {C.MAX_FILES + 2} entries",
                            code="SIGNATURE_FILE_EXTRA",
                            file=prefix or str(root),
                            hint="a bundle holds its manifest, its listed files and a signature",
                        )
            for entry in sorted(entries, key=lambda e: e.name):
                name = prefix + entry.name
                if entry.is_symlink():
                    raise BundleError(
                        "symbolic links are not allowed in a bundle",
                        code="PATH_SYMLINK",
                        file=name,
                        hint="replace the link by the file it points to",
                    )
                if entry.is_dir(follow_symlinks=False):
                    if depth + 1 > MAX_DEPTH:
                        raise BundleError(
                            f"directories are nested more than {MAX_DEPTH} levels deep",
                            code="PATH_NOT_REGULAR",
                            file=name,
                            hint="an asa bundle is flat: remove the directories",
                        )
                    stack.append((Path(entry.path), name + "/", depth + 1))
                elif entry.is_file(follow_symlinks=False):
                    if name != C.SIGNATURE_FILE:
                        names.append(name)
                else:
                    raise BundleError(
                        "the bundle holds something that is not a regular file or directory",
                        code="PATH_NOT_REGULAR",
                        file=name,
                        hint="remove it from the bundle directory",
                    )

    try:
        walk(bundle)
    except OSError as exc:
        raise BundleError(
            f"cannot list the bundle directory: {exc.strerror or exc}",
            code="IO_ERROR",
            file=str(bundle),
        ) from exc
    return sorted(names, key=path_key)


def path_key(name: str) -> tuple[str, ...]:
    # model_signing sorts resources by PurePosixPath, i.e. by path components.
    return tuple(name.split("/"))


def sha256_file(bundle: Path, name: str) -> str:
    opened = open_regular(bundle / name, name)
    if isinstance(opened, Problem):
        raise BundleError.from_problems([opened])
    fd, st = opened
    cap = size_cap(name)
    with os.fdopen(fd, "rb") as handle:
        if st.st_nlink > 1:
            raise BundleError(
                f"has {st.st_nlink} hard links",
                code="PATH_HARDLINK",
                file=name,
                hint="copy the file instead of hard-linking it",
            )
        if st.st_size > cap:
            raise BundleError(
                f"is {st.st_size} bytes, over the cap of {cap}",
                code="FILE_TOO_LARGE",
                file=name,
                hint="see the spec's size caps (section 2.4)",
            )
        digest = hashlib.sha256()
        read = 0
        while chunk := handle.read(_CHUNK):
            read += len(chunk)
            if read > cap:  # the file grew while it was hashed
                raise BundleError(
                    f"is over the cap of {cap} bytes", code="FILE_TOO_LARGE", file=name
                )
            digest.update(chunk)
    return digest.hexdigest()


def hash_bundle_files(bundle_dir: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 (hex) of every file of the bundle directory except ``model.sig``, by name."""
    bundle = checked_bundle_dir(bundle_dir)
    return {name: sha256_file(bundle, name) for name in list_bundle_files(bundle)}


def root_digest_of_dir(bundle_dir: str | os.PathLike[str]) -> str:
    """Root digest (``sha256:<hex>``) of the bundle in ``bundle_dir``: sha256 of its manifest."""
    bundle = checked_bundle_dir(bundle_dir)
    manifest = bundle / C.MANIFEST_FILE
    if manifest.is_symlink():
        raise BundleError(
            "the manifest is a symbolic link", code="PATH_SYMLINK", file=C.MANIFEST_FILE
        )
    if not manifest.is_file():
        raise BundleError(
            "the bundle has no manifest file",
            code="MANIFEST_MISSING",
            file=C.MANIFEST_FILE,
            hint="pass the directory of an asa-bundle",
        )
    if manifest.stat().st_size > C.MAX_MANIFEST_BYTES:
        raise BundleError(
            f"the manifest is larger than {C.MAX_MANIFEST_BYTES} bytes",
            code="MANIFEST_TOO_LARGE",
            file=C.MANIFEST_FILE,
        )
    # read bounded, without blocking on a FIFO or following a link
    data = read_input(manifest, what="the manifest", cap=C.MAX_MANIFEST_BYTES, follow_links=False)
    return root_digest(data)


def is_inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True
