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
import json
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


def read_json_object(path: pathlib.Path, expected: str) -> dict:
    """The JSON object in the file `path`; ValueError naming the file and what is wrong (not UTF-8,
    not JSON, not an object) and what was `expected` (e.g. "save_pretrained's metadata")."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; expected {expected} as JSON") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected {expected}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}; expected {expected} as a JSON object")
    return value


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


class OutputPathError(ValueError):
    """An output path that cannot be written as asked; found before anything is written."""


class OutputIsInputError(OutputPathError):
    """Writing the output would replace or change a file or directory the same command reads."""


def check_suffix(path: str | os.PathLike, suffix: str, format: str) -> None:
    """Raise OutputPathError unless `path` ends in `suffix` (any case), the one a file in `format` has.

    A file named for another format is then read as that one (tests/test_output_paths.py).
    """
    if pathlib.PurePath(os.fspath(path)).suffix.lower() != suffix:
        raise OutputPathError(f"{os.fspath(path)}: format {format} writes *{suffix} files; "
                              f"expected an output path ending in {suffix}")  # fmt: skip


def check_output_is_not_input(output: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Raise OutputIsInputError, before anything is written, if writing `output` could lose one of `inputs`.

    Refused: `output` is an input (the same path, a symlink to it, a hard link of it); `output`
    lies inside an input directory (a calibration folder, a save_pretrained directory); or an input
    lies inside `output` (a directory output replaces everything in it). URLs are compared by text.
    """
    target = _comparable(output)
    for source in inputs:
        read = _comparable(source)
        if target == read or _is_within(target, read) or _is_within(read, target) or _same_file(output, source):
            raise OutputIsInputError(
                f"the output {os.fspath(output)} would overwrite the input {os.fspath(source)}: "
                "write to a path outside what the command reads"
            )


def _comparable(path: str | os.PathLike) -> str:
    """`path` with symlinks resolved (local) or its trailing slash dropped (URL)."""
    return os.fspath(user_path(path)).rstrip("/") if is_remote(path) else os.path.realpath(user_path(path))


def _is_within(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` are one local file under two names (hard links)."""
    if is_remote(a) or is_remote(b):
        return False
    try:
        return os.path.samefile(user_path(a), user_path(b))
    except OSError:  # either does not exist yet
        return False
