"""Where a bundle is written: which destinations may be replaced, and how.

A user's files are never deleted or overwritten by accident:

* ``check_replaceable`` lets ``force`` replace only a directory that is an
  asa bundle (its manifest parses and it holds nothing the manifest does not
  list, apart from the signature); anything else is refused with the reason.
* ``Staging`` creates the temporary directory next to the destination together
  with an *owner file* (``.NAME.asa-tmp-TOKEN.owner``: pid, process start time,
  host, phase). Only directories named by an owner file are ever removed.
* ``commit`` moves the staged bundle into place in one step where the OS
  offers one (``renameat2(RENAME_EXCHANGE)`` / ``RENAME_NOREPLACE`` on Linux);
  elsewhere it swaps in two renames, recording the phase in the owner file
  first.
* ``recover`` (run before every write) finishes or rolls back what a dead run
  on the same destination left: a half-written temporary directory is
  removed; an interrupted two-step swap is completed when the new bundle is
  whole, otherwise rolled back. Runs that are alive, or that ran on another
  host, are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asa_format import constants as C
from asa_format.errors import ErrorCode, UsageError
from asa_format.format.manifest import parse_manifest

__all__ = ["Staging", "check_replaceable", "commit", "exchange_supported", "recover"]

TMP_TAG = ".asa-tmp-"  # .NAME.asa-tmp-TOKEN (the staged bundle)
OLD_TAG = ".asa-old-"  # .NAME.asa-old-TOKEN (the replaced bundle during a two-step swap)
OWNER_SUFFIX = ".owner"  # .NAME.asa-tmp-TOKEN.owner (who created the two above)

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100

# A test hook: called with the name of each step of a commit ("exchanged",
# "moved-old", "moved-new"), so that a test can kill the process there.
_after_step: Any = None


# --------------------------------------------------------------------------- renameat2


def _load_renameat2() -> Any:
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2; False where the OS or the file system does not offer it."""
    if _renameat2 is None:
        return False
    rc = _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def exchange_supported() -> bool:
    """Whether this platform has an atomic directory exchange (renameat2)."""
    return _renameat2 is not None


# --------------------------------------------------------------------------- checks


def _error(message: str, code: ErrorCode, hint: str, path: Path) -> UsageError:
    return UsageError(message, code=code, file=str(path), hint=hint)


def check_replaceable(dest: Path) -> None:
    """Raise unless ``dest`` is an asa bundle directory that ``force`` may replace."""
    hint = "choose another destination, or move the directory away yourself"
    if dest.is_symlink() or not dest.is_dir():
        raise _error(
            f"destination {str(dest)!r} exists and is not a directory; --force only replaces an asa bundle",
            "DESTINATION_NOT_BUNDLE",
            hint,
            dest,
        )
    manifest_path = dest / C.MANIFEST_FILE
    try:
        data = (
            manifest_path.read_bytes()
            if manifest_path.is_file() and not manifest_path.is_symlink()
            else None
        )
    except OSError:
        data = None
    manifest = parse_manifest(data)[0] if data is not None else None
    if manifest is None:
        raise _error(
            f"destination {str(dest)!r} is not an asa bundle (no {C.MANIFEST_FILE} that parses); "
            "--force only replaces an asa bundle and never deletes other directories",
            "DESTINATION_NOT_BUNDLE",
            hint,
            dest,
        )
    known = {C.MANIFEST_FILE, C.SIGNATURE_FILE, *manifest.files}
    try:
        extra = sorted(p.name for p in dest.iterdir() if p.name not in known)
    except OSError as exc:
        raise _error(
            f"cannot list {str(dest)!r}: {exc.strerror}", "IO_ERROR", "check permissions", dest
        ) from exc
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise _error(
            f"destination {str(dest)!r} is an asa bundle but also holds files it does not list ({shown}); "
            "--force would delete them",
            "DESTINATION_NOT_BUNDLE",
            "move those files out of the bundle, or choose another destination",
            dest,
        )


# --------------------------------------------------------------------------- owner files


def _start_time(pid: int) -> str | None:
    """The process start time (Linux: /proc/PID/stat field 22), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # cannot tell: treat as alive, never remove
        return True
    current = _start_time(pid)
    return start is None or current is None or current == start


def _write_owner(path: Path, record: dict[str, Any], *, create: bool) -> None:
    data = json.dumps(record, indent=2, sort_keys=True).encode("utf-8")
    target = path if create else path.with_name(path.name + ".new")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if create else os.O_TRUNC)
    fd = os.open(target, flags, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if not create:
        os.replace(target, path)


class Staging:
    """A temporary directory next to ``dest``, with an owner file naming it."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.parent = dest.parent
        for _ in range(16):
            token = secrets.token_hex(6)
            self.tmp = self.parent / f".{dest.name}{TMP_TAG}{token}"
            self.owner = self.parent / f".{dest.name}{TMP_TAG}{token}{OWNER_SUFFIX}"
            self.old = self.parent / f".{dest.name}{OLD_TAG}{token}"
            if not any(p.exists() or p.is_symlink() for p in (self.tmp, self.owner, self.old)):
                break
        pid = os.getpid()
        self.record: dict[str, Any] = {
            "destination": dest.name,
            "host": socket.gethostname(),
            "old": self.old.name,
            "phase": "write",
            "pid": pid,
            "start": _start_time(pid),
            "tmp": self.tmp.name,
        }
        _write_owner(self.owner, self.record, create=True)  # O_EXCL: never someone else's
        try:
            os.mkdir(self.tmp, 0o700)
        except BaseException:
            self.owner.unlink()
            raise

    def set_phase(self, phase: str) -> None:
        self.record["phase"] = phase
        _write_owner(self.owner, self.record, create=False)

    def discard(self) -> None:
        """Remove what this run created (the staged or replaced bundle, the owner file)."""
        for path in (self.tmp, self.old):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.owner.unlink()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the two renames of a swap run (POSIX)."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = mask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


def _step(name: str) -> None:
    if _after_step is not None:
        _after_step(name)


def commit(staging: Staging, *, replace: bool) -> None:
    """Move the staged bundle to the destination; the old one (if any) is removed."""
    tmp, dest, old = staging.tmp, staging.dest, staging.old
    if not replace:
        if _rename2(tmp, dest, _RENAME_NOREPLACE):
            staging.discard()
            return
        if dest.exists() or dest.is_symlink():
            raise OSError(
                errno.EEXIST, "the destination appeared while the bundle was written", str(dest)
            )
        os.rename(tmp, dest)
        staging.discard()
        return
    if _rename2(tmp, dest, _RENAME_EXCHANGE):  # one atomic step; tmp now holds the old bundle
        _step("exchanged")
        staging.discard()
        return
    staging.set_phase("swap")
    with _signals_deferred():
        os.rename(dest, old)
        _step("moved-old")
        os.rename(tmp, dest)
        _step("moved-new")
    staging.discard()


# --------------------------------------------------------------------------- recovery


def _ours(parent: Path, name: str, dest_name: str, tag: str) -> Path | None:
    """The sibling ``name`` if it is a directory of the form we create, else None."""
    if not isinstance(name, str) or not re.fullmatch(
        re.escape(f".{dest_name}{tag}") + r"[0-9a-f]{12}", name
    ):
        return None
    path = parent / name
    return path if path.is_dir() and not path.is_symlink() else None


def recover(dest: Path) -> list[str]:
    """Finish or roll back what dead runs left next to ``dest``; returns notes for a person."""
    parent = dest.parent
    prefix = f".{dest.name}{TMP_TAG}"
    notes: list[str] = []
    try:
        owners = sorted(
            p
            for p in parent.iterdir()
            if p.name.startswith(prefix) and p.name.endswith(OWNER_SUFFIX)
        )
    except OSError:
        return notes
    host = socket.gethostname()
    for owner in owners:
        if owner.is_symlink() or not owner.is_file():
            continue
        try:
            record = json.loads(owner.read_text(encoding="utf-8"))
            pid = int(record["pid"])
            tmp_name, old_name, phase = record["tmp"], record["old"], record["phase"]
        except (OSError, ValueError, KeyError, TypeError):
            notes.append(f"left {owner.name} alone: not an owner file this version can read")
            continue
        if owner.name != f"{tmp_name}{OWNER_SUFFIX}" or record.get("destination") != dest.name:
            notes.append(f"left {owner.name} alone: it names other paths")
            continue
        if record.get("host") != host or _alive(pid, record.get("start")):
            continue
        tmp = _ours(parent, tmp_name, dest.name, TMP_TAG)
        old = _ours(parent, old_name, dest.name, OLD_TAG)
        if phase == "swap" and old is not None and not (dest.exists() or dest.is_symlink()):
            if tmp is not None:  # killed between the two renames: the new bundle is whole
                os.rename(tmp, dest)
                notes.append(
                    f"completed the replacement of {str(dest)!r} that process {pid} started"
                )
            else:  # pragma: no cover - cannot happen with the rename order used
                os.rename(old, dest)
                notes.append(f"restored {str(dest)!r} from the replacement process {pid} started")
                old = None
        for path in (tmp, old):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
                notes.append(f"removed {path.name}, left by process {pid} that no longer runs")
        with contextlib.suppress(FileNotFoundError):
            owner.unlink()
        with contextlib.suppress(FileNotFoundError):
            owner.with_name(owner.name + ".new").unlink()
    return notes
