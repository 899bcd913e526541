"""Which weights format a file holds, told by its content: the suffix decides only where the
content has no magic number (the paper's `.net`) or matches none (so the suffix's reader names
what it expected)."""

from __future__ import annotations

import pathlib
import zipfile
from typing import Literal

from flax_squeezenet.weights.ncnn import PARAM_MAGIC
from flax_squeezenet.weights.pth import LEGACY_MAGIC

FileFormat = Literal["sqz", "pth", "ncnn", "net"]

SQZ_MAGIC = b"SQZDEEPC"
# A legacy torch.save file starts with the pickle of LEGACY_MAGIC: PROTO n, LONG1 of 10 bytes.
_LEGACY_PTH_MAGIC = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")
_BY_SUFFIX: dict[str, FileFormat] = {".sqz": "sqz", ".net": "net", ".param": "ncnn", ".bin": "ncnn"}


def _starts_with(path: pathlib.Path, magic: bytes, skip: int = 0) -> bool:
    with open(path, "rb") as file:
        return file.read(skip + len(magic))[skip:] == magic


def _is_ncnn_param(path: pathlib.Path) -> bool:
    return path.is_file() and _starts_with(path, PARAM_MAGIC.encode())


def file_format(path: pathlib.Path) -> FileFormat:
    """The format of the weights file `path` ("sqz", "pth", "ncnn" for either file of a `.param`/
    `.bin` pair, or "net"): by magic number, else by suffix, else "pth"."""
    if _starts_with(path, SQZ_MAGIC):
        return "sqz"
    if zipfile.is_zipfile(path) or _starts_with(path, _LEGACY_PTH_MAGIC, skip=2):
        return "pth"
    if _is_ncnn_param(path) or (path.suffix == ".bin" and _is_ncnn_param(path.with_suffix(".param"))):
        return "ncnn"
    return _BY_SUFFIX.get(path.suffix, "pth")
