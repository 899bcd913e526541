"""Read PyTorch `.pth` state dicts without torch, and without unpickling arbitrary objects.

A `.pth` written by `torch.save` is either a zip archive (PyTorch >= 1.6) holding `data.pkl` plus
one raw file per tensor storage, or the legacy stream of pickles followed by the raw storages. Both
are read here with an unpickler that resolves only the handful of globals a state dict needs
(`collections.OrderedDict`, torch's tensor-rebuild functions and storage types), each mapped to a
harmless local stand-in; any other global (`os.system`, `builtins.eval`, ...) raises
`UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle refers to something other than tensors and ordered dicts of them."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage the pickle points to; its bytes are fetched by the reader after unpickling."""

    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor(_v2): records where the tensor's data lives."""
    if not isinstance(storage, _StorageRef):
        raise UnsafePickleError("a tensor in the pickle does not point to a storage")
    return _TensorRef(storage, int(storage_offset), tuple(map(int, size)), tuple(map(int, stride)))


def _rebuild_parameter(data, *_unused):
    """Stand-in for torch._utils._rebuild_parameter: a Parameter is its tensor."""
    return data


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles tensors and (ordered) dicts of them; refuses every other global."""

    def __init__(self, file: BinaryIO, legacy: bool):
        super().__init__(file)
        self._legacy = legacy
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: a state dict holds only tensors "
                "and ordered dicts of them"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}: expected a tensor storage")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected storage type {storage_type!r}")
        if not isinstance(numel, int) or numel < 0:
            raise ValueError(f"storage {key} declares {numel!r} elements, expected a count")
        if self._legacy and len(pid) > 5 and pid[5] is not None:
            raise ValueError("storage views in legacy .pth files are not supported")
        return self.storages.setdefault(key, _StorageRef(key, storage_type.dtype, numel))


def _tensor_refs(obj: Any) -> Iterator[_TensorRef]:
    if isinstance(obj, _TensorRef):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensor_refs(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensor_refs(value)


def _elements_needed(obj: Any, storages: dict[str, _StorageRef]) -> dict[str, int]:
    """For each storage, how many elements its tensors use: the most that will be read of it.

    Raises ValueError if a tensor reaches outside the size its storage declares.
    """
    needed = dict.fromkeys(storages, 0)
    for tensor in _tensor_refs(obj):
        if min(tensor.shape, default=1) == 0:
            continue
        if tensor.offset < 0 or min(tensor.stride, default=0) < 0:
            raise ValueError(f"a tensor of shape {tensor.shape} has a negative offset or stride")
        end = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride)) + 1
        if end > tensor.storage.numel:
            raise ValueError(f"a tensor of shape {tensor.shape} reaches past the end of its storage")
        needed[tensor.storage.key] = max(needed[tensor.storage.key], end)
    return needed


def _materialize(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _TensorRef):
        data = storages[obj.storage.key]
        itemsize = data.dtype.itemsize
        if min(obj.shape, default=1) == 0:
            return np.zeros(obj.shape, data.dtype)
        view = np.lib.stride_tricks.as_strided(
            data[obj.offset :],
            shape=obj.shape,
            strides=tuple(s * itemsize for s in obj.stride),
            writeable=False,
        )
        return np.array(view)
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v, storages)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, storages) for v in obj)
    return obj


def _storage_array(raw: bytes, ref: _StorageRef, byteorder: str) -> np.ndarray:
    dtype = ref.dtype.newbyteorder("<" if byteorder == "little" else ">")
    return np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize).astype(ref.dtype)


def _read_zip(archive: zipfile.ZipFile) -> Any:
    pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
    if len(pickles) != 1:
        raise ValueError(f"expected one data.pkl in the archive, found {len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    unpickler = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), legacy=False)
    obj = unpickler.load()
    byteorder = "little"
    if prefix + "byteorder" in archive.namelist():
        byteorder = archive.read(prefix + "byteorder").decode().strip()
    storages = {}
    for key, count in _elements_needed(obj, unpickler.storages).items():
        ref = unpickler.storages[key]
        entry = archive.getinfo(f"{prefix}data/{key}")
        size = count * ref.dtype.itemsize
        if entry.file_size < size:
            raise ValueError(f"storage {key} holds {entry.file_size} bytes, its tensors need {size}")
        # Only the bytes the tensors use are decompressed: an entry declaring far more (a zip
        # bomb) costs nothing (tests/test_pth_limits.py::test_zip_bomb_entry_is_not_read_in_full).
        with archive.open(entry) as data:
            storages[key] = _storage_array(data.read(size), ref, byteorder)
    return _materialize(obj, storages)


def _read_legacy(file: BinaryIO) -> Any:
    def header() -> Any:
        return _StateDictUnpickler(file, legacy=True).load()

    if header() != LEGACY_MAGIC:
        raise ValueError("not a PyTorch file: expected a zip archive or the legacy magic number")
    header()  # protocol version
    sys_info = header()
    byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
    unpickler = _StateDictUnpickler(file, legacy=True)
    obj = unpickler.load()
    needed = _elements_needed(obj, unpickler.storages)
    file_size = os.fstat(file.fileno()).st_size
    storages = {}
    for key in header():
        ref = unpickler.storages[str(key)]
        count = int.from_bytes(file.read(8), byteorder)
        if count < needed[ref.key] or count * ref.dtype.itemsize > file_size - file.tell():
            raise ValueError(
                f"storage {ref.key} declares {count} elements: more than the file holds, or fewer than its tensors need"
            )
        raw = file.read(count * ref.dtype.itemsize)
        storages[ref.key] = _storage_array(raw, ref, byteorder)
    return _materialize(obj, storages)


def load_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict in a `.pth` file written by `torch.save`, as `{name: numpy array}`.

    Accepts a dict of tensors, or a dict holding one under "state_dict" or "model" (training
    checkpoints). Raises `UnsafePickleError` if the pickle refers to any other object, and
    `ValueError` if the file is not a PyTorch state dict.
    """
    path = os.fspath(os.path.expanduser(path))
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                obj = _read_zip(archive)
        else:
            with open(path, "rb") as file:
                obj = _read_legacy(file)
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a readable PyTorch state dict: {error}") from None
    for wrapper_key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper_key), dict):
            obj = obj[wrapper_key]
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a dict of tensors)")
    return dict(obj)
