"""Writing files so that a crash never leaves a half-written one that looks finished; hashing them.

Every file is written under a temporary name beside its final one and renamed into place; the
temporary names are unique, so two processes writing the same file never share one. A folder
made whole is filled as a temporary folder beside it. A lock makes two processes take turns.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import InputError

_UMASK = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)...
os.umask(_UMASK)  # ...and put back at once, before any task thread runs


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix + ".part", dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def temp_folder_beside(final: Path) -> Path:
    """A new, empty, uniquely named folder beside `final`, to fill and then rename to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.chmod(folder, 0o777 & ~_UMASK)  # mkdtemp makes 0700; finished folders get the usual permissions
    return Path(folder)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (made if missing) for the block: another holder waits.

    flock: the kernel drops it when the process dies, so a killed run never leaves it held, and
    it is per open file, so two threads of one process take turns too. The file is left in
    place: removing it would let a waiting process lock a file nobody else opens any more.
    """
    import fcntl  # POSIX only: imported here so the rest of this module imports anywhere

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the block raises


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def nearest_existing(path: Path) -> Path:
    """`path`, or the closest of its parents that exists (where a folder not made yet would be made)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: str | Path, name: str, fix: str = "give a folder you can write to") -> None:
    """Refuse, before any model loads, a folder that cannot be written: a file, a read-only folder,
    a place under /proc. `name` is the flag or setting that named it. Leaves nothing behind: a
    folder that does not exist yet is made by the run itself, where a test file is made and removed.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InputError(f"{name}: {path} is a file, not a folder: {fix}")
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise InputError(f"{name}: {existing} is a file, so {path} cannot be made a folder: {fix}")
    try:  # os.access says yes to root and knows nothing of read-only mounts: try it
        os.rmdir(tempfile.mkdtemp(prefix=".genbundle-probe-", dir=existing))
    except OSError as err:
        raise InputError(f"{name}: cannot write in {existing} ({err.strerror}): {fix}") from None
