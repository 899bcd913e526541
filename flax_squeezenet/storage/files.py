"""Paths as users write them, and writes that are whole or absent with the modes the user's umask gives.

A path is local (`~` and relative paths allowed) or a URL that `etils.epath` opens (`gs://`, `s3://`,
...; tests/test_remote_paths.py). Local writes go to a hidden temporary sibling renamed into place.
Object stores cannot rename atomically, so a remote write is made whole in a local temporary first
and then uploaded: a file as one object (whole or absent), a directory into a hidden sibling that
replaces the old directory only once completely uploaded.

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
import uuid
from collections.abc import Iterator

from etils import epath

FILE_MODE = 0o666
DIRECTORY_MODE = 0o777

AnyPath = pathlib.Path | epath.Path


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL such as `gs://bucket/dir` rather than a local path."""
    return "://" in os.fspath(path)


def user_path(path: str | os.PathLike) -> AnyPath:
    """A URL as an `epath.Path`; a local path with `~` expanded, made absolute (no symlinks resolved).

    Raises ValueError for a URL whose scheme epath does not open.
    """
    if is_remote(path):
        try:
            return epath.Path(os.fspath(path))
        except KeyError:
            raise ValueError(f"{os.fspath(path)}: expected a local path or a gs://, s3:// or az:// URL") from None
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


def atomic_file(path: str | os.PathLike) -> contextlib.AbstractContextManager[pathlib.Path]:
    """Yield a local temporary path; on success it replaces `path`, on failure it is removed.

    Readers never see a half-written `path`, an existing `path` survives a failed write, and a
    local result has the mode the user's umask gives. Creates missing parent directories.
    """
    path = user_path(path)
    return _uploaded_file(path) if is_remote(path) else _renamed_file(path)


@contextlib.contextmanager
def _uploaded_file(path: epath.Path) -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="flax_squeezenet-upload-") as local:
        temporary = pathlib.Path(local) / path.name
        yield temporary
        path.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(temporary).copy(path, overwrite=True)


@contextlib.contextmanager
def _renamed_file(path: pathlib.Path) -> Iterator[pathlib.Path]:
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


def atomic_directory(directory: AnyPath) -> contextlib.AbstractContextManager[pathlib.Path]:
    """Yield an empty local staging directory; on success it replaces `directory`.

    A failed write leaves an existing `directory` as it was and no staging directory behind. For
    a local `directory`, if the final swap itself fails, the previous directory is put back; a
    remote one is replaced only after the new one is completely uploaded next to it.
    """
    return _uploaded_directory(directory) if is_remote(directory) else _renamed_directory(directory)


@contextlib.contextmanager
def _uploaded_directory(directory: epath.Path) -> Iterator[pathlib.Path]:
    uploading = directory.parent / f".{directory.name}.saving-{uuid.uuid4().hex}"
    try:
        with tempfile.TemporaryDirectory(prefix="flax_squeezenet-upload-") as staging:
            yield pathlib.Path(staging)
            copy_tree(epath.Path(staging), uploading)
        if directory.exists():
            directory.rmtree()
        uploading.rename(directory)
    finally:
        remove_tree(uploading)


def remove_tree(path: AnyPath) -> None:
    """Delete the directory `path` and what is in it, as far as possible; an absent `path` is fine."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        path.rmtree(missing_ok=True)


def copy_tree(source: epath.Path, destination: epath.Path) -> None:
    """Copy the directory `source` with everything in it to `destination` (either may be remote)."""
    destination.mkdir(parents=True, exist_ok=True)
    for child in source.iterdir():
        if child.is_dir():
            copy_tree(child, destination / child.name)
        else:
            child.copy(destination / child.name, overwrite=True)


@contextlib.contextmanager
def local_copy(path: AnyPath) -> Iterator[pathlib.Path]:
    """`path` itself if local; else a temporary local copy of the remote file or directory, removed afterwards."""
    if not is_remote(path):
        yield pathlib.Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="flax_squeezenet-download-") as local:
        copy = pathlib.Path(local) / path.name
        if path.is_dir():
            copy_tree(path, epath.Path(copy))
        else:
            path.copy(epath.Path(copy))
        yield copy


@contextlib.contextmanager
def _renamed_directory(directory: pathlib.Path) -> Iterator[pathlib.Path]:
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
