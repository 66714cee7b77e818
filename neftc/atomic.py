"""Write outputs atomically: all of a command's outputs, or none.

- ``atomic_directory``: build a directory beside the destination, then swap it in as a whole.
  The swap is serialised by a lock file (``.NAME.lock``, ``fcntl.flock``) beside the destination
  and is one ``renameat2(RENAME_EXCHANGE)`` where the kernel and file system have it, so a reader
  never sees a missing or half-written directory and concurrent writers never mix their files: the
  last one to finish wins, whole.
- ``atomic_file``: one file, written to a temporary beside it and renamed into place.
- ``atomic_files``: several files of one directory as one transaction (``neftc verify``'s
  ``verify.json`` and ``report.html``): either all are replaced or none.

On any failure the previous outputs are untouched and no temporary, backup or lock file is left
behind. (A process killed with SIGKILL cannot clean up: its ``.NAME.tmp-*`` sibling remains, and
the destination is still the previous output, or the new one.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from neftc.errors import OutputError

try:
    import fcntl
except ImportError:  # not POSIX: no lock (a single writer per output is then the caller's job)
    fcntl = None  # type: ignore[assignment]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """glibc's ``renameat2`` (Linux 3.15+, glibc 2.28+), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step; False where the system cannot."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # this file system (or kernel) has no RENAME_EXCHANGE
    raise OSError(code, os.strerror(code), str(b))


def _lock_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


@contextmanager
def directory_lock(dest: Path, required: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of the output ``dest`` (``fcntl.flock`` on the sibling file
    ``.NAME.lock``, created on demand and removed on release).

    Every writer that replaces ``dest`` or files in it takes this lock for the short moment of
    its renames. The lock file is unlinked while still held; a waiter that then gets the lock on
    the unlinked file sees that the path no longer names it and locks the current one instead, so
    there is never more than one holder and no lock file is left behind. Where the lock file
    cannot be created (no write access to the parent) the lock is an error, or with
    ``required=False`` skipped.
    """
    if fcntl is None:
        yield
        return
    path = _lock_path(Path(os.path.realpath(dest)))  # one lock per directory, however named
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if required:
                raise OutputError(f"cannot lock output '{dest}' (lock file '{path}'): "
                                  f"{exc.strerror}") from None
            fd = -1
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
        except BaseException:
            os.close(fd)
            raise
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the holder before us removed this lock file: lock the current one
    if fd < 0:
        yield  # no lock file possible here, and not required
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _check_destination(dest: Path, shown: Path, marker: str) -> None:
    """``dest`` is absent, empty or an earlier output; the caller holds the lock, so no other
    neftc writer is between its renames."""
    try:
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            raise OutputError(f"output '{shown}' exists and is not a directory; choose another -o")
        if dest.is_dir() and any(dest.iterdir()) and not (dest / marker).exists():
            raise OutputError(f"output directory '{shown}' is not empty and is not a neftc output "
                              f"(no {marker}); choose another -o or empty it")
    except FileNotFoundError:
        return  # removed meanwhile, by something else than neftc: absent
    except OSError as exc:
        raise OutputError(f"cannot read output directory '{shown}': "
                          f"{exc.strerror or exc}") from None


def _swap_in(tmp: Path, dest: Path, shown: Path) -> None:
    """Put the finished directory ``tmp`` at ``dest`` (the caller holds the lock)."""
    try:
        if not os.path.lexists(dest):
            os.rename(tmp, dest)  # fails, never replaces, if someone made a non-empty one since
            return
        if _exchange(tmp, dest):
            shutil.rmtree(tmp, ignore_errors=True)  # ``tmp`` now names the previous output
            return
        # No atomic exchange here: move the previous output aside, then the new one in. Under
        # the lock no other neftc writer runs in between; a reader may find ``dest`` missing for
        # that moment.
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, old / "previous")
        try:
            os.rename(tmp, dest)
        except BaseException:
            try:
                os.rename(old / "previous", dest)
            except OSError as exc:
                raise OutputError(f"cannot replace output '{shown}': {exc.strerror or exc}; "
                                  f"the previous output is now '{old / 'previous'}'") from None
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise OutputError(f"cannot replace output '{shown}': {exc.strerror or exc}") from None


@contextmanager
def atomic_directory(dest: Path, marker: str) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces ``dest`` as a whole.

    ``dest`` may be absent, empty, or an earlier output (it holds ``marker``); anything else is
    refused, so a typo never deletes a user's directory. This is checked before the work and again
    under the lock just before the swap. A symbolic link to a directory is followed: the directory
    it names is replaced. On any failure ``dest`` is unchanged and nothing is left behind.
    """
    shown = Path(dest)
    dest = Path(os.path.realpath(shown))
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory next to '{shown}': "
                          f"{exc.strerror or exc}") from None
    with directory_lock(dest):  # fail before the work, not after it
        _check_destination(dest, shown, marker)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an output directory is not
    except OSError as exc:
        raise OutputError(f"cannot create output directory next to '{shown}': "
                          f"{exc.strerror or exc}") from None
    try:
        yield tmp
        with directory_lock(dest):
            _check_destination(dest, shown, marker)  # another process may have written it since
            _swap_in(tmp, dest, shown)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (same suffix); on success it replaces ``dest``,
    on failure it is removed. A directory at ``dest`` is refused."""
    with atomic_files(dest) as (tmp,):
        yield tmp


def _backup_name(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.old-{secrets.token_hex(6)}"


@contextmanager
def atomic_files(*dests: Path) -> Iterator[tuple[Path, ...]]:
    """Write several files as one transaction; yield one temporary path beside each destination.

    When the block succeeds, each previous file but the last is first hard-linked (else copied)
    to a backup beside it, then the temporaries are renamed into place in the order given. If any
    of this fails, the renames already made are undone (the backup renamed back, or the new file
    removed where there was none before), so the destinations hold either all the new contents or
    all the previous ones; temporaries and backups are removed in every case. Only a process
    killed between two renames can leave a mix, so give the file the others are derived from
    first.
    """
    dests = tuple(Path(d) for d in dests)
    for dest in dests:
        if dest.is_dir():
            raise OutputError(f"output '{dest}' is a directory; give a file name")
    temps: list[Path] = []
    backups: dict[Path, Path] = {}
    try:
        _make_temps(dests, temps)
        yield tuple(temps)
        _back_up(dests, temps, backups)
        _rename_all(dests, temps, backups)
    finally:
        for path in [*temps, *backups.values()]:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _make_temps(dests: tuple[Path, ...], temps: list[Path]) -> None:
    """One empty temporary beside each destination, appended to ``temps`` as it is made."""
    try:
        for dest in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{dest.stem}.tmp-", suffix=dest.suffix,
                                        dir=dest.parent)
            os.close(fd)
            temps.append(Path(name))
    except OSError as exc:
        raise OutputError(f"cannot write '{dest}': {exc.strerror or exc}") from None


def _back_up(dests: tuple[Path, ...], temps: list[Path], backups: dict[Path, Path]) -> None:
    """Make the temporaries readable like any output, and back up each previous file but the
    last (whose rename is never undone) into ``backups``: a hard link, else a copy."""
    dest = dests[-1] if dests else None  # the file an error names
    try:
        for tmp in temps:
            os.chmod(tmp, 0o644)  # mkstemp makes it private; an output file is not
        for dest in dests[:-1]:
            if os.path.lexists(dest):
                backups[dest] = _backup_name(dest)
                try:
                    os.link(dest, backups[dest], follow_symlinks=False)
                except OSError:  # no hard links on this file system
                    shutil.copy2(dest, backups[dest], follow_symlinks=False)
    except OSError as exc:
        raise OutputError(f"cannot write '{dest}': {exc.strerror or exc}") from None


def _rename_all(dests: tuple[Path, ...], temps: list[Path], backups: dict[Path, Path]) -> None:
    """Rename the temporaries into place in order; on any failure undo the renames made (the
    previous file back, or none as before)."""
    done: list[Path] = []
    try:
        for tmp, dest in zip(temps, dests):
            os.replace(tmp, dest)
            done.append(dest)
    except BaseException as exc:
        for dest in reversed(done):
            if dest in backups:
                os.replace(backups.pop(dest), dest)
            else:
                os.unlink(dest)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write '{dests[len(done)]}': {exc.strerror or exc}; "
                              "no output was changed") from None
        raise
