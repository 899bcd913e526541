"""The compressed SqueezeNet file (`.sqz`): self-describing, versioned, checksummed.

Layout (little-endian): magic b"SQZDEEPC", uint16 version, uint16 zero, uint32 header length,
the header (UTF-8 JSON: model, model_kwargs, in_channels, num_classes, input_convention, the
weights' preprocessing (`InputConvention.to_dict`; files written before it was stored mean
ImageNet's), and per parameter its path, shape, encoding and, for shared kernels, bits, entries and
bit counts), the
payload, then the sha256 of everything before it. Per parameter the payload holds either float32
values ("float32") or ("shared") the codebook (float32, 2**bits), the Huffman code lengths of the
codebook indices (uint8, 2**bits) and of the gaps (uint8, 16), then the two Huffman bit streams:
one codebook index and one relative-position gap per stored entry (see `sparse`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import struct

import numpy as np

from flax_squeezenet.storage import files
from flax_squeezenet.weights import huffman, sparse
from flax_squeezenet.weights.compressed import CompressedModel, SharedKernel, check_bits
from flax_squeezenet.weights.conventions import IMAGENET, PREPROCESSING_KEY, InputConvention
from flax_squeezenet.weights.formats import SQZ_MAGIC
from flax_squeezenet.zoo import sizes

SUFFIX = ".sqz"
MAGIC = SQZ_MAGIC
VERSION = 1
_PREAMBLE = struct.Struct("<8sHHI")
_CHECKSUM_BYTES = hashlib.sha256().digest_size


def _encode_shared(kernel: SharedKernel) -> tuple[dict, bytes]:
    flat = kernel.indices.ravel()
    positions = np.flatnonzero(flat)
    gaps, is_filler = sparse.encode_positions(positions)
    indices = np.zeros(gaps.size, np.int64)
    indices[~is_filler] = flat[positions]
    index_lengths = huffman.code_lengths(indices, kernel.codebook.size)
    gap_lengths = huffman.code_lengths(gaps, sparse.MAX_GAP + 1)
    index_stream, index_bits = huffman.encode(indices, index_lengths)
    gap_stream, gap_bits = huffman.encode(gaps, gap_lengths)
    entry = {"encoding": "shared", "bits": kernel.bits, "entries": int(gaps.size), "index_bits": index_bits,
             "gap_bits": gap_bits}  # fmt: skip
    tables = kernel.codebook.astype("<f4").tobytes() + index_lengths.tobytes() + gap_lengths.tobytes()
    blob = tables + index_stream + gap_stream
    return entry, blob


def encode_compressed(compressed: CompressedModel) -> bytes:
    """The bytes of the `.sqz` file holding `compressed`."""
    entries, blobs = [], []
    for path, leaf in compressed.leaves.items():
        if isinstance(leaf, SharedKernel):
            entry, blob = _encode_shared(leaf)
        else:
            entry, blob = {"encoding": "float32"}, np.asarray(leaf, "<f4").tobytes()
        entries.append({"path": path, "shape": list(leaf.shape), **entry, "bytes": len(blob)})
        blobs.append(blob)
    header = json.dumps(
        {"model": compressed.model, "model_kwargs": compressed.model_kwargs, "in_channels": compressed.in_channels,
         "num_classes": compressed.num_classes, "input_convention": compressed.input_convention,
         PREPROCESSING_KEY: compressed.preprocessing.to_dict(), "parameters": entries},
        separators=(",", ":"),
    ).encode()  # fmt: skip
    body = _PREAMBLE.pack(MAGIC, VERSION, 0, len(header)) + header + b"".join(blobs)
    return body + hashlib.sha256(body).digest()


def save_compressed_file(compressed: CompressedModel, path: str | os.PathLike) -> pathlib.Path:
    """Write `compressed` to `path` as a `.sqz` file (atomically) and return the path."""
    data = encode_compressed(compressed)
    with files.atomic_file(path) as temporary:
        temporary.write_bytes(data)
    return files.user_path(path)


def _checked_body(data: bytes, path: str | os.PathLike) -> tuple[dict, memoryview]:
    """(header, payload) of a `.sqz` file's bytes, after checking magic, version and checksum, and
    the header's structure and declared sizes against the model it names (`_check_sizes`)."""
    if len(data) < _PREAMBLE.size + _CHECKSUM_BYTES or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a compressed SqueezeNet file (expected it to start with {MAGIC!r})")
    _, version, _, header_length = _PREAMBLE.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"{path} is a compressed SqueezeNet file of version {version}; expected version {VERSION}")
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.sha256(body).digest() != checksum:
        raise ValueError(f"{path} is truncated or altered: its sha256 checksum does not match its contents")
    header = _parsed_header(body[_PREAMBLE.size : _PREAMBLE.size + header_length], path)
    payload = memoryview(body)[_PREAMBLE.size + header_length :]
    _check_sizes(header, len(payload), path)
    return header, payload


_HEADER_KEYS = {"model": str, "model_kwargs": dict, "input_convention": str, "parameters": list}
_ENTRY_KEYS = {"path": str, "shape": list, "encoding": str, "bytes": int}
_SHARED_COUNTS = ("bits", "entries", "index_bits", "gap_bits")


def _parsed_header(raw: bytes, path: str | os.PathLike) -> dict:
    """The header's JSON object, with the keys and types `read_compressed` relies on; ValueError
    naming the file and what is wrong otherwise (tests/test_hostile_files.py)."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError
        raise ValueError(f"{path}: its header is not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: its header is a JSON {type(header).__name__}; expected an object")
    for key, kind in _HEADER_KEYS.items():
        if not isinstance(header.get(key), kind):
            raise ValueError(f"{path}: its header lacks {key!r} (a JSON {kind.__name__})")
    for number, entry in enumerate(header["parameters"]):
        typed = isinstance(entry, dict) and all(isinstance(entry.get(key), kind) for key, kind in _ENTRY_KEYS.items())
        if not typed:
            raise ValueError(f"{path}: parameter entry {number} of its header lacks one of {sorted(_ENTRY_KEYS)}")
        if not all(isinstance(n, int) and n >= 0 for n in entry["shape"]) or entry["bytes"] < 0:
            raise ValueError(f"{path}: parameter {entry['path']} declares shape {entry['shape']} and "
                             f"{entry['bytes']} bytes; expected non-negative integers")  # fmt: skip
    return header


def _check_sizes(header: dict, payload_bytes: int, path: str | os.PathLike) -> None:
    """Raise ValueError naming the file unless every declared shape is the model's and every
    declared count fits it (so decoding allocates no more than the model), before any decoding."""
    declared = {entry["path"]: entry["shape"] for entry in header["parameters"]}
    if len(declared) != len(header["parameters"]):
        raise ValueError(f"{path}: its header lists a parameter twice")
    stated = {key: header[key] for key in ("in_channels", "num_classes") if key in header}
    for key in stated.keys() & header["model_kwargs"].keys():
        if stated[key] != header["model_kwargs"][key]:
            raise ValueError(f"{path}: its header says {key} {stated[key]}, its model_kwargs {key} "
                             f"{header['model_kwargs'][key]}")  # fmt: skip
    expected = sizes.model_shapes(header["model"], {**header["model_kwargs"], **stated}, str(path))
    sizes.check_declared(declared, expected, str(path), header["model"])
    if sum(entry["bytes"] for entry in header["parameters"]) != payload_bytes:
        raise ValueError(f"{path}: the header describes {sum(entry['bytes'] for entry in header['parameters'])} "
                         f"bytes of parameters, the file holds {payload_bytes}")  # fmt: skip
    for entry in (entry for entry in header["parameters"] if entry["encoding"] == "shared"):
        counts = [entry.get(key) for key in _SHARED_COUNTS]
        if not all(isinstance(count, int) and count >= 0 for count in counts):
            raise ValueError(f"{path}: parameter {entry['path']} lacks one of {_SHARED_COUNTS} (non-negative integers)")
        if entry["entries"] > math.prod(entry["shape"]):
            raise ValueError(f"{path}: parameter {entry['path']} declares {entry['entries']} stored entries; "
                             f"expected at most its {math.prod(entry['shape'])} weights")  # fmt: skip


def _decode_shared(entry: dict, blob: memoryview) -> SharedKernel:
    bits, count = entry["bits"], entry["entries"]
    check_bits(bits)
    size = 2**bits
    shape = tuple(entry["shape"])
    codebook = np.frombuffer(blob, "<f4", size).astype(np.float32)
    if codebook[0] != 0:
        raise ValueError("codebook entry 0 must be 0.0")
    offset = 4 * size
    index_lengths = np.frombuffer(blob, np.uint8, size, offset)
    gap_lengths = np.frombuffer(blob, np.uint8, sparse.MAX_GAP + 1, offset + size)
    offset += size + sparse.MAX_GAP + 1
    index_end = offset + (entry["index_bits"] + 7) // 8
    gap_end = index_end + (entry["gap_bits"] + 7) // 8
    if gap_end != len(blob):
        raise ValueError(f"its record holds {len(blob)} bytes, its bit counts say {gap_end}")
    indices = huffman.decode(bytes(blob[offset:index_end]), entry["index_bits"], index_lengths, count)
    gaps = huffman.decode(bytes(blob[index_end:gap_end]), entry["gap_bits"], gap_lengths, count)
    flat = np.zeros(int(np.prod(shape)), np.uint8)
    flat[sparse.decode_positions(gaps, flat.size)] = indices
    return SharedKernel(codebook, flat.reshape(shape))


def _decode_leaf(entry: dict, blob: memoryview) -> SharedKernel | np.ndarray:
    if entry["encoding"] == "shared":
        return _decode_shared(entry, blob)
    if entry["encoding"] == "float32":
        shape = tuple(entry["shape"])
        if len(blob) != 4 * int(np.prod(shape)):
            raise ValueError(f"it holds {len(blob)} bytes for a float32 array of shape {shape}")
        return np.frombuffer(blob, "<f4").astype(np.float32).reshape(shape)
    raise ValueError(f"unknown encoding {entry['encoding']!r}")


def read_compressed(path: str | os.PathLike) -> CompressedModel:
    """The `CompressedModel` in the `.sqz` file at `path`.

    Raises ValueError (naming the file) when it is not such a file, is of another version, or is
    truncated or altered: the checksum is verified before anything is decoded.
    """
    header, payload = _checked_body(pathlib.Path(path).read_bytes(), path)
    leaves, offset = {}, 0
    for entry in header["parameters"]:
        blob = payload[offset : offset + entry["bytes"]]
        offset += entry["bytes"]
        try:
            leaves[entry["path"]] = _decode_leaf(entry, blob)
        except ValueError as error:
            raise ValueError(f"{path}: parameter {entry['path']} cannot be decoded: {error}") from None
    try:
        return CompressedModel(header["model"], header["model_kwargs"], header["input_convention"], leaves,
                               _preprocessing(header, path))  # fmt: skip
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _preprocessing(header: dict, path: str | os.PathLike) -> InputConvention:
    stored = header.get(PREPROCESSING_KEY)
    return IMAGENET if stored is None else InputConvention.from_dict(stored, str(path))


def read_preprocessing(path: str | os.PathLike) -> InputConvention:
    """How images are prepared for the model in the `.sqz` file at `path` (checked as `read_compressed`
    checks it, without decoding the weights)."""
    header, _ = _checked_body(pathlib.Path(path).read_bytes(), path)
    return _preprocessing(header, path)


def read_weights(path: str | os.PathLike) -> tuple[str, dict, dict]:
    """(model name, model options, variables as numpy) of a `.sqz` file, as `load_pretrained` takes them."""
    compressed = read_compressed(path)
    return compressed.model, dict(compressed.model_kwargs), {"params": compressed.params()}
