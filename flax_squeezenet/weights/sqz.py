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
import os
import pathlib
import struct

import numpy as np

from flax_squeezenet.storage import files
from flax_squeezenet.weights import huffman, sparse
from flax_squeezenet.weights.compressed import CompressedModel, SharedKernel, check_bits
from flax_squeezenet.weights.conventions import IMAGENET, PREPROCESSING_KEY, InputConvention

SUFFIX = ".sqz"
MAGIC = b"SQZDEEPC"
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
    """(header, payload) of a `.sqz` file's bytes, after checking magic, version and checksum."""
    if len(data) < _PREAMBLE.size + _CHECKSUM_BYTES or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path} is not a compressed SqueezeNet file (expected it to start with {MAGIC!r})")
    _, version, _, header_length = _PREAMBLE.unpack_from(data)
    if version != VERSION:
        raise ValueError(f"{path} is a compressed SqueezeNet file of version {version}; expected version {VERSION}")
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    if hashlib.sha256(body).digest() != checksum:
        raise ValueError(f"{path} is truncated or altered: its sha256 checksum does not match its contents")
    header = json.loads(body[_PREAMBLE.size : _PREAMBLE.size + header_length])
    return header, memoryview(body)[_PREAMBLE.size + header_length :]


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
    if offset != len(payload):
        raise ValueError(f"{path}: the header describes {offset} bytes of parameters, the file holds {len(payload)}")
    return CompressedModel(header["model"], header["model_kwargs"], header["input_convention"], leaves,
                           _preprocessing(header, path))  # fmt: skip


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
