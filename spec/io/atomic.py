"""Writes a crash cannot leave half done: single files, and whole directories.

A file is written under a temporary name next to its target, flushed to disk and renamed over it, so
a reader sees the old content or the new. A directory of several files (a checkpoint, a benchmark
report) is written complete into a temporary sibling and then swapped in with one rename, so a
reader sees the old set of files or the new one, never a mix:

* where the kernel can exchange two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``), the new
  directory and the old one trade places in one step and the old one is then deleted;
* elsewhere the old directory is first renamed to ``.<name>.spec-old`` and the new one renamed into
  place; a crash between the two renames leaves only the backup, which :func:`readable_directory`
  reads in place of the missing directory (and the next save cleans up).

Files in the old directory that the writer does not own (a README next to the heads, say) are
hard-linked into the new one before the swap, so a save never deletes what it did not write.

Every change to the file system goes through :func:`_write_file`, :func:`_replace`,
:func:`_exchange` or :func:`_remove_tree`, so a test can make the k-th of them fail and check
what a crash at that point leaves.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from spec.errors import PathError

TMP_TAG = ".spec-tmp-"
OLD_TAG = ".spec-old"


# ---- the primitive writes (monkeypatched by the crash tests) ------------------------------------------
def _write_file(path: Path, data: bytes) -> None:
    """Create the new file ``path`` holding ``data``, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask: shared or installed files must stay readable to others
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if fd != -1:
            os.close(fd)


def _replace(source: Path, destination: Path) -> None:
    os.replace(source, destination)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically; False where the platform or file system cannot (nothing is changed)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# ---- checks before anything is written --------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Refuse (:class:`PathError`) an output file that cannot be written: it is a directory, or its
    folder is a file, is read-only, or cannot be created. Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise PathError(f"The {what} {path} is a directory; give a file name inside it.")
    _check_creatable_directory(path.parent, f"the folder of the {what} {path}")
    return path


def check_writable_directory(path: str | os.PathLike, what: str = "output directory", replaced: bool = True) -> Path:
    """Refuse (:class:`PathError`) an output directory that cannot be written: a file is in the way or a
    parent is read-only; with ``replaced`` (it will be swapped as a whole) also the current directory or
    one holding it. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"The {what} {path} is a file; give a directory (it is created when missing).")
    _check_creatable_directory(path, f"the {what} {path}")
    if not replaced:
        return path
    # The directory is replaced as a whole: its parent must take new entries too.
    _check_creatable_directory(Path(os.path.realpath(path)).parent, f"the folder holding the {what} {path}")
    here = Path.cwd().resolve()
    target = Path(os.path.realpath(path))
    if here == target or target in here.parents:
        raise PathError(f"The {what} {path} is the current directory (or holds it), which spec will not replace; "
                        "give a directory of its own, e.g. a new subdirectory.")
    return path


def _check_creatable_directory(directory: Path, what: str) -> None:
    existing = _nearest_existing(directory.absolute())
    if not existing.is_dir():
        raise PathError(f"Cannot create {what}: {existing} is a file, not a directory; choose another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PathError(f"Cannot write {what}: {existing} is not writable; choose a writable location.")


# ---- single files -------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old content or the new, never a mix."""
    path = check_writable_file(path, "file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PathError(f"Cannot create the folder {path.parent}: {exc.strerror or exc}; choose another path.") from exc
    tmp = path.parent / f".{path.name}{TMP_TAG}{secrets.token_hex(4)}"
    try:
        _write_file(tmp, data)
        _replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, PathError):
            raise PathError(f"Cannot write {path}: {exc.strerror or exc}; free space or choose a writable "
                            "location.") from exc
        raise
    _fsync_directory(path.parent)


# ---- whole directories --------------------------------------------------------------------------
def backup_path(directory: Path) -> Path:
    return directory.parent / f".{directory.name}{OLD_TAG}"


def readable_directory(directory: str | os.PathLike) -> Optional[Path]:
    """The directory to read for ``directory``: itself, or, when a save was interrupted between its two
    renames (platforms without an atomic exchange), the complete old copy it left; None when neither."""
    directory = Path(directory)
    if directory.exists():
        return directory
    backup = backup_path(directory)
    return backup if backup.is_dir() else None


def _clean_stale(target: Path) -> None:
    """Remove what interrupted saves of ``target`` left: temporary siblings, and a backup whose
    directory is back in place."""
    for stale in target.parent.glob(f".{target.name}{TMP_TAG}*"):
        _remove_tree(stale)
    backup = backup_path(target)
    if backup.exists() and target.exists():
        _remove_tree(backup)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _carry_over(old: Path, new: Path, owned: set[str]) -> None:
    """Hard-link what the writer does not own from the old directory into the new one."""
    for entry in old.iterdir():
        if entry.name in owned or (entry.name.startswith(".") and (TMP_TAG in entry.name or entry.name.endswith(".tmp"))):
            continue
        target = new / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


@contextmanager
def replace_directory(target: str | os.PathLike, owned: Iterable[str], what: str = "directory") -> Iterator[Path]:
    """Yield an empty staging directory; when the block succeeds it replaces ``target`` as a whole.

    ``owned``: the entries the writer produces; anything else already in ``target`` is kept. If the
    block raises, ``target`` is untouched. A crash at any point leaves the old directory or the new one.
    """
    target = Path(os.path.realpath(check_writable_directory(target, what)))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale(target)
        staging = target.parent / f".{target.name}{TMP_TAG}{secrets.token_hex(4)}"
        staging.mkdir()
    except OSError as exc:
        raise PathError(f"Cannot write the {what} {target}: {exc.strerror or exc}; choose a writable location.") from exc
    swapped = False
    try:
        yield staging
        if target.is_dir():
            _carry_over(target, staging, set(owned))
        for file in staging.rglob("*"):
            if file.is_file() and not file.is_symlink():
                _fsync_file(file)
        _fsync_directory(staging)
        swapped = _swap_in(staging, target)
    finally:
        if not swapped:
            _remove_tree(staging)  # a failed save leaves the old directory as it was


def _swap_in(staging: Path, target: Path) -> bool:
    parent = target.parent
    backup = backup_path(target)
    if not target.exists():
        _replace(staging, target)
        _fsync_directory(parent)
        if backup.exists():
            _remove_tree(backup)  # the copy an earlier interrupted save left
        return True
    if _exchange(staging, target):
        _fsync_directory(parent)
        _remove_tree(staging)  # now the old directory
        return True
    if backup.exists():
        _remove_tree(backup)
    _replace(target, backup)
    _replace(staging, target)
    _fsync_directory(parent)
    _remove_tree(backup)
    return True
