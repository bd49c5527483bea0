"""Reading a file that a person or a caller names: bounded, and only a regular file.

Every path our code is given to *read* (an import source, a ``.svec`` or
GGUF file, ``asa run --messages``, a model's ``config.json``, a key file, a
recovery record) goes through :func:`open_input` or :func:`read_input`:

1. ``stat`` first (following links unless ``follow_links=False``): anything
   but a regular file (a directory, a FIFO, a device such as ``/dev/zero``,
   a socket) is refused before it is opened (``INPUT_NOT_REGULAR``), and so
   is a file over the cap of its role (``INPUT_TOO_LARGE``);
2. ``open`` with ``O_NONBLOCK`` (a FIFO swapped in after the ``stat`` does
   not wait for a writer) and ``O_NOCTTY``; then ``fstat`` of the open
   descriptor decides again (regular? within the cap?), so a path replaced
   between the two steps is still refused;
3. read at most ``cap + 1`` bytes, in chunks, so a file that grows while it
   is read is refused instead of read without end.

A missing or unreadable file is ``IO_ERROR``. Nothing here reads more than
the cap, blocks, or follows a link when told not to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from asa_format.errors import AsaError, UsageError

__all__ = [
    "MAX_JSON_INPUT_BYTES",
    "MAX_KEY_BYTES",
    "MAX_RECORD_BYTES",
    "check_model_dir",
    "check_path_arg",
    "describe_mode",
    "open_input",
    "read_input",
]

MAX_JSON_INPUT_BYTES = 8 << 20  # a chat-messages file (asa run --messages)
MAX_KEY_BYTES = 1 << 16  # a PEM key file
MAX_RECORD_BYTES = 1 << 12  # a recovery (owner) record
MAX_CONFIG_BYTES = 4 << 20  # a model's config.json
MAX_MODEL_DIR_ENTRIES = 10_000
_CHUNK = 1 << 20


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for a message."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def check_path_arg(value: object, name: str) -> Path:
    """``value`` as a Path, or a coded UsageError for anything that is not a usable path."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise UsageError(
            f"{name} must be a path (str or os.PathLike), not {type(value).__name__}",
            hint=f"pass {name} as a str or pathlib.Path",
        )
    text = os.fspath(value)
    if not isinstance(text, str):
        raise UsageError(
            f"{name} must be a text path, not {type(text).__name__}",
            hint=f"pass {name} as a str or pathlib.Path",
        )
    if not text or "\x00" in text:
        raise UsageError(
            f"{name} {text!r} is empty or holds a NUL character",
            hint=f"pass the path of {name}",
        )
    return Path(text)


def _not_regular(path: Path, what: str, mode: int) -> AsaError:
    return AsaError(
        f"{what} {str(path)!r} is {describe_mode(mode)}, not a regular file",
        code="INPUT_NOT_REGULAR",
        file=str(path),
        hint=f"pass {what} as a regular file",
    )


def _too_large(path: Path, what: str, size: int, cap: int) -> AsaError:
    return AsaError(
        f"{what} {str(path)!r} is {size} bytes, over the cap of {cap}",
        code="INPUT_TOO_LARGE",
        file=str(path),
        hint=f"{what} is never that large; is this the right file?",
    )


def _io_error(path: Path, what: str, exc: OSError) -> AsaError:
    reason = "does not exist" if isinstance(exc, FileNotFoundError) else "cannot be read"
    return AsaError(
        f"{what} {str(path)!r} {reason}: {exc.strerror or exc}",
        code="IO_ERROR",
        file=str(path),
        hint=f"pass the path of {what}",
    )


@contextlib.contextmanager
def open_input(
    path: str | os.PathLike[str], *, what: str, cap: int, follow_links: bool = True
) -> Iterator[tuple[int, int]]:
    """Open a regular file of at most ``cap`` bytes; yield ``(descriptor, size)``.

    The descriptor is closed on exit. ``what`` names the file in messages
    ("the --messages file", "the GGUF file").
    """
    p = check_path_arg(path, what)
    try:
        st = os.stat(p) if follow_links else os.lstat(p)
    except OSError as exc:
        raise _io_error(p, what, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(p, what, st.st_mode)
    if st.st_size > cap:
        raise _too_large(p, what, st.st_size, cap)
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_NOCTTY", 0)
        | getattr(os, "O_CLOEXEC", 0)
        | getattr(os, "O_BINARY", 0)
        | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    )
    try:
        fd = os.open(p, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:  # replaced by a link since the lstat
            raise _not_regular(p, what, stat.S_IFLNK) from None
        raise _io_error(p, what, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(p, what, st.st_mode)
        if st.st_size > cap:
            raise _too_large(p, what, st.st_size, cap)
        yield fd, int(st.st_size)
    except OSError as exc:
        raise _io_error(p, what, exc) from None
    finally:
        os.close(fd)


def read_input(
    path: str | os.PathLike[str], *, what: str, cap: int, follow_links: bool = True
) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (see the module docstring)."""
    p = check_path_arg(path, what)
    with open_input(p, what=what, cap=cap, follow_links=follow_links) as (fd, size):
        chunks: list[bytes] = []
        total = 0
        try:
            while total <= cap:
                chunk = os.read(fd, min(_CHUNK, cap + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise _io_error(p, what, exc) from None
        if total > cap:  # the file grew while it was read
            raise _too_large(p, what, max(total, size), cap)
        return b"".join(chunks)


def check_model_dir(path: str | os.PathLike[str]) -> None:
    """Refuse a model directory that a loader could block on or read without end.

    A model directory is read by other libraries (transformers opens
    ``config.json``, the tokenizer files and the weights itself), so before
    they run: every entry of the directory must be a regular file or a
    directory once links are followed (a FIFO, a device or a socket there is
    refused with ``INPUT_NOT_REGULAR``), and ``config.json``, when present,
    a regular file under ``MAX_CONFIG_BYTES``. A directory with more than
    ``MAX_MODEL_DIR_ENTRIES`` entries is refused too. Nothing is opened.
    """
    root = check_path_arg(path, "the model directory")
    try:
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_MODEL_DIR_ENTRIES:
                    raise AsaError(
                        f"the model directory {str(root)!r} has more than {MAX_MODEL_DIR_ENTRIES} entries",
                        code="INPUT_TOO_LARGE",
                        file=str(root),
                        hint="pass the directory written by save_pretrained",
                    )
                try:
                    st = os.stat(entry.path)  # links followed: the hub cache links to blobs
                except OSError:
                    continue  # a dangling link: the loader reports what it misses
                what = f"{entry.name!r} in the model directory"
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                    raise _not_regular(Path(entry.path), what, st.st_mode)
                if entry.name == "config.json" and (
                    stat.S_ISDIR(st.st_mode) or st.st_size > MAX_CONFIG_BYTES
                ):
                    if stat.S_ISDIR(st.st_mode):
                        raise _not_regular(Path(entry.path), what, st.st_mode)
                    raise _too_large(Path(entry.path), what, st.st_size, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise _io_error(root, "the model directory", exc) from None
