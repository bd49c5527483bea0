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

A single file (a signature, an exported GGUF) is written by ``StagedFile``: a
private ``Staging`` directory (owner file included) next to the destination,
never inside the bundle being read, the file created in it with ``O_EXCL |
O_NOFOLLOW`` and mode 0644, then moved into place. What a killed run left
there (SIGKILL included) is removed by ``recover`` before the next write of
that file. Without ``--force`` every commit uses a
no-replace primitive (``renameat2(RENAME_NOREPLACE)``; elsewhere ``link`` +
``unlink`` for a file, an exclusive ``mkdir`` then moves for a directory), so
a destination that another writer creates meanwhile is never replaced; the
command reports it as existing. SIGINT and SIGTERM (``asa_format.cli.support.run_main``
turns both into exceptions) remove the temporaries on the way out.
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
import stat
from collections.abc import Callable, Iterator
from glob import escape as glob_escape
from pathlib import Path
from types import TracebackType
from typing import Any

from asa_format import constants as C
from asa_format.errors import AsaError, ErrorCode, UsageError
from asa_format.format.jsonio import loads_strict
from asa_format.format.manifest import parse_manifest
from asa_format.storage.inputs import MAX_RECORD_BYTES, read_input

__all__ = [
    "StagedFile",
    "Staging",
    "check_replaceable",
    "commit",
    "exchange_supported",
    "inside",
    "normalized",
    "recover",
    "write_new_file",
]

TMP_TAG = ".asa-tmp-"  # .NAME.asa-tmp-TOKEN (the staged bundle)
OLD_TAG = ".asa-old-"  # .NAME.asa-old-TOKEN (the replaced bundle during a two-step swap)
OWNER_SUFFIX = ".owner"  # .NAME.asa-tmp-TOKEN.owner (who created the two above)

_MAX_PID = (1 << 31) - 1  # pid_t is a signed 32-bit integer
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100

# A test hook: called with the name of each step of a commit ("exchanged",
# "moved-old", "moved-new"), so that a test can kill the process there.
_after_step: Any = None
# A test hook: called with the destination after the new content is complete and
# just before it is committed (a test creates the destination there, as another
# writer would, or signals the process).
_before_commit: Callable[[Path], None] | None = None

_NEW_FILE_FLAGS = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


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
    try:  # bounded, no link followed, a FIFO does not block: anything else is "not a bundle"
        data: bytes | None = read_input(
            manifest_path, what="the manifest", cap=C.MAX_MANIFEST_BYTES, follow_links=False
        )
    except AsaError:
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


def write_new_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (``O_EXCL | O_NOFOLLOW``: never an existing file or a link) and fsync it."""
    fd = os.open(path, _NEW_FILE_FLAGS, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


_OWNER_NEW = ".new-"  # .NAME.asa-tmp-TOKEN.owner.new-TOKEN2: the next record, then renamed


def _write_owner(path: Path, record: dict[str, Any], *, create: bool) -> None:
    data = json.dumps(record, indent=2, sort_keys=True).encode("utf-8")
    if create:
        write_new_file(path, data)
        return
    # the next record goes to a fresh, unpredictable name, created exclusively, then replaces
    # the owner file: a link planted at a name we use is never followed
    target = path.with_name(f"{path.name}{_OWNER_NEW}{secrets.token_hex(6)}")
    write_new_file(target, data)
    try:
        os.replace(target, path)
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink()
        raise


class Staging:
    """A temporary directory next to ``dest`` (or in ``near``), with an owner file naming it.

    The directory is made by an exclusive ``mkdir`` (mode 0700) at a name with
    48 random bits, after its owner file was created with ``O_EXCL |
    O_NOFOLLOW``: never an existing path, never through a link.
    """

    def __init__(self, dest: Path, *, near: Path | None = None) -> None:
        self.dest = dest
        self.parent = near if near is not None else dest.parent
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


def _appeared(dest: Path) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "the destination appeared while it was written", str(dest))


def _move_dir_no_replace(tmp: Path, dest: Path) -> None:
    """Without renameat2: claim ``dest`` with an exclusive mkdir, then move the files in
    (the manifest last, so a reader never sees a manifest without its files)."""
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        raise _appeared(dest) from None
    try:
        for name in sorted(os.listdir(tmp), key=lambda n: (n == C.MANIFEST_FILE, n)):
            os.rename(tmp / name, dest / name)  # into our own new 0700 directory
        os.chmod(dest, 0o755)
    except BaseException:
        with contextlib.suppress(OSError):  # put back what was moved, remove what we claimed
            for name in os.listdir(dest):
                os.rename(dest / name, tmp / name)
            os.rmdir(dest)
        raise


def _move_file_no_replace(tmp: Path, dest: Path) -> None:
    """Move the file ``tmp`` to ``dest`` unless ``dest`` exists (then FileExistsError)."""
    try:
        if _rename2(tmp, dest, _RENAME_NOREPLACE):
            return
        os.link(tmp, dest, follow_symlinks=False)  # fails if dest exists, even as a dangling link
    except FileExistsError:
        raise _appeared(dest) from None
    os.unlink(tmp)


def commit(staging: Staging, *, replace: bool) -> None:
    """Move the staged bundle to the destination; the old one (if any) is removed.

    Without ``replace`` a destination that exists by now (another writer made
    it while this one wrote) is left alone: FileExistsError.
    """
    tmp, dest, old = staging.tmp, staging.dest, staging.old
    if _before_commit is not None:
        _before_commit(dest)
    if not replace:
        try:
            moved = _rename2(tmp, dest, _RENAME_NOREPLACE)
        except FileExistsError:
            raise _appeared(dest) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise _appeared(dest) from None
        if not moved:
            _move_dir_no_replace(tmp, dest)
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


# --------------------------------------------------------------------------- single files


def normalized(dest: Path) -> Path:
    """``dest`` as an absolute path whose last component is a real name.

    The folder holding it is resolved (its links followed), the last
    component never: a link at the destination is replaced as a link, never
    followed. ``.`` and ``..`` name the directory they resolve to, so that its
    temporaries go beside it, never inside it.
    """
    dest = Path(os.path.abspath(dest)) if dest.name in ("", ".", "..") else dest.absolute()
    return dest.parent.resolve() / dest.name


def inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` is ``directory`` or lies below it (links resolved)."""
    try:
        path.resolve().relative_to(directory.resolve())
    except (ValueError, OSError):
        return False
    return True


class StagedFile:
    """A new file for ``dest``, written in a private directory and then moved into place.

    The directory is a :class:`Staging` directory (mode 0700, unpredictable
    name, an owner file naming this process) in ``near`` (default: the
    destination's folder; a signature inside a bundle passes the bundle's
    parent, so that nothing temporary is ever inside the bundle). What dead
    runs left there for the same file name is recovered first. ``path`` does not exist yet: :meth:`write` creates it with
    ``O_EXCL | O_NOFOLLOW`` and mode 0644, or a writer that takes a path
    creates it there. Used as a context manager, the directory and whatever
    is left in it are removed on the way out, whether the commit happened or
    not (an exception, SIGINT or SIGTERM).
    """

    def __init__(self, dest: Path, *, near: Path | None = None) -> None:
        self.dest = dest
        self.notes = recover(dest, near=near)
        self._staging = Staging(dest, near=near)
        self.dir = self._staging.tmp
        self.path = self.dir / dest.name

    def write(self, data: bytes) -> None:
        write_new_file(self.path, data)

    def commit(self, *, replace: bool, check: Callable[[Path], None] | None = None) -> None:
        """Move the file to ``dest``.

        Without ``replace`` an existing destination (one that appeared while
        the file was written included) is never replaced: FileExistsError.
        With ``replace``, ``check(dest)`` runs first if the destination
        exists and may refuse it by raising.
        """
        if _before_commit is not None:
            _before_commit(self.dest)
        if not replace:
            _move_file_no_replace(self.path, self.dest)
        else:
            if check is not None and (self.dest.exists() or self.dest.is_symlink()):
                check(self.dest)
            os.replace(self.path, self.dest)  # replaces a link itself, never its target
        _fsync_dir(self.dest.parent)

    def discard(self) -> None:
        self._staging.discard()

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def regular_file(path: Path) -> os.stat_result | None:
    """The ``lstat`` of ``path`` if it is a regular file (not a link), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


# --------------------------------------------------------------------------- recovery


def _ours(parent: Path, name: str, dest_name: str, tag: str) -> Path | None:
    """The sibling ``name`` if it is a directory of the form we create, else None."""
    if not isinstance(name, str) or not re.fullmatch(
        re.escape(f".{dest_name}{tag}") + r"[0-9a-f]{12}", name
    ):
        return None
    path = parent / name
    return path if path.is_dir() and not path.is_symlink() else None


def _read_record(owner: Path) -> dict[str, Any] | None:
    """The owner record at ``owner`` if it is one this version wrote, else None.

    Read bounded (a few hundred bytes; no link followed, never a FIFO) and
    checked member by member: the pid an integer in 1..2**31-1 (a pid of
    10**30 would overflow ``os.kill``), the names and the phase strings, the
    start time a string or null.
    """
    try:
        doc = loads_strict(
            read_input(
                owner, what="the owner record", cap=MAX_RECORD_BYTES, follow_links=False
            ).decode("utf-8")
        )
    except (AsaError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    if type(pid) is not int or not 1 <= pid <= _MAX_PID:
        return None
    if not all(isinstance(doc.get(k), str) for k in ("tmp", "old", "phase", "destination", "host")):
        return None
    if doc.get("start") is not None and not isinstance(doc.get("start"), str):
        return None
    return doc


def recover(dest: Path, *, near: Path | None = None) -> list[str]:
    """Finish or roll back what dead runs left next to ``dest``; returns notes for a person.

    ``near`` is the folder a :class:`StagedFile` for ``dest`` stages in when it
    is not ``dest``'s own (a signature inside a bundle).
    """
    parent = near if near is not None else dest.parent
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
        record = _read_record(owner)
        if record is None:
            notes.append(f"left {owner.name} alone: not an owner file this version can read")
            continue
        pid = record["pid"]
        tmp_name, old_name, phase = record["tmp"], record["old"], record["phase"]
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
        pending = re.compile(re.escape(owner.name + _OWNER_NEW) + r"[0-9a-f]{12}")
        for stale in parent.glob(glob_escape(owner.name) + _OWNER_NEW + "*"):
            if pending.fullmatch(stale.name) and not stale.is_symlink() and stale.is_file():
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
    return notes
