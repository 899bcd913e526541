"""Paths as users write them, and writes that are whole or absent with the modes the user's umask gives.

`tempfile` creates files 0600 and directories 0700 whatever the umask; renaming them into place
would keep those modes, so a shared cache or a served model became unreadable to others
(tests/test_files.py::test_atomic_file_respects_the_umask).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

FILE_MODE = 0o666
DIRECTORY_MODE = 0o777


def user_path(path: str | os.PathLike) -> pathlib.Path:
    """`path` with `~` expanded, made absolute against the current directory (no symlinks resolved)."""
    return pathlib.Path(path).expanduser().absolute()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere the only portable read is to set and restore it.
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def give_umask_mode(path: str | os.PathLike) -> None:
    """Set the mode `open`/`mkdir` would have given `path` under the current umask."""
    default = DIRECTORY_MODE if os.path.isdir(path) else FILE_MODE
    os.chmod(path, default & ~current_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is removed.

    Readers never see a half-written `path`, an existing `path` survives a failed write, and the
    result has the mode the user's umask gives. Creates missing parent directories.
    """
    path = user_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = pathlib.Path(name)
    try:
        yield temporary
        give_umask_mode(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def make_staging_directory(path: pathlib.Path, purpose: str) -> pathlib.Path:
    """A new empty directory next to `path` (hidden, named for `purpose`) with the umask's mode."""
    staging = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{purpose}-"))
    give_umask_mode(staging)
    return staging


@contextlib.contextmanager
def atomic_directory(directory: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield an empty staging directory next to `directory`; on success it replaces `directory`.

    A failed write leaves an existing `directory` as it was and no staging directory behind; if
    the final swap itself fails, the previous directory is put back.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = make_staging_directory(directory, "saving")
    try:
        yield staging
        if not directory.exists():
            os.replace(staging, directory)
            return
        retired = make_staging_directory(directory, "old")
        os.replace(directory, retired / directory.name)
        try:
            os.replace(staging, directory)
        except BaseException:
            os.replace(retired / directory.name, directory)
            retired.rmdir()
            raise
        shutil.rmtree(retired)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
