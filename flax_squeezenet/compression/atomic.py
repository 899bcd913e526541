"""Writing a file so that readers see either the old file or the complete new one."""

from __future__ import annotations

import os
import pathlib
import tempfile


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomically(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    """Write `data` to `path` via a temporary sibling renamed over it; permissions follow the
    umask as for a plain `open(path, "wb")`. On failure nothing is left behind."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
