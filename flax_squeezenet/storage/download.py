"""The cache directory and verified downloads into it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator

from flax_squeezenet.storage import files

CACHE_ENV = "FLAX_SQUEEZENET_CACHE"
TIMEOUT_S = 30


class DownloadError(OSError):
    """A file could not be fetched (offline, unreachable, or not what was expected)."""


def cache_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
    """Where downloads and converted weights are kept: `override`, else `$FLAX_SQUEEZENET_CACHE`,
    else `$XDG_CACHE_HOME/flax_squeezenet`, else `~/.cache/flax_squeezenet`."""
    if override is not None:
        return files.user_path(override)
    if os.environ.get(CACHE_ENV):
        return files.user_path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return files.user_path(xdg) / "flax_squeezenet"


def sha256_of(path: pathlib.Path) -> str:
    """The hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def downloaded(url: str, directory: pathlib.Path, sha256_prefix: str | None = None) -> Iterator[pathlib.Path]:
    """Download `url` to a temporary file in `directory`, yield its path, delete it afterwards.

    Raises `DownloadError` if the URL cannot be fetched or the file's sha256 does not start with
    `sha256_prefix`; no file is left behind either way. The file has the mode the umask gives, so
    a caller may rename it into place.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".download-")
    path = pathlib.Path(name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as file:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    while chunk := response.read(1 << 20):
                        digest.update(chunk)
                        file.write(chunk)
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise DownloadError(f"could not download {url}: {reason}") from None
        if sha256_prefix is not None and not digest.hexdigest().startswith(sha256_prefix):
            raise DownloadError(
                f"{url} has sha256 {digest.hexdigest()}, expected one starting with {sha256_prefix}: "
                "the download is corrupt or not the expected file"
            )
        files.give_umask_mode(path)
        yield path
    finally:
        path.unlink(missing_ok=True)


def fetched(url: str, destination: pathlib.Path, sha256_prefix: str) -> pathlib.Path:
    """`destination`, downloaded from `url` unless it is already there with the expected sha256.

    A copy whose sha256 does not start with `sha256_prefix` (truncated, damaged) is replaced.
    Raises `DownloadError` as `downloaded` does.
    """
    if destination.is_file() and sha256_of(destination).startswith(sha256_prefix):
        return destination
    with downloaded(url, destination.parent, sha256_prefix) as path:
        os.replace(path, destination)
    return destination
