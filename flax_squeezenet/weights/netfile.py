"""Writing the SqueezeNet paper's Deep Compression `.net` file (layout: `deepcompression`).

Only the model that file format describes can be written: SqueezeNet v1.0 with 3 input channels
and 1,000 classes, 8-bit shared kernels, taking Caffe's input (BGR, 0-255 minus mean).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from flax_squeezenet.storage import files
from flax_squeezenet.weights import sparse
from flax_squeezenet.weights.compressed import CompressedModel, SharedKernel
from flax_squeezenet.weights.deepcompression import CAFFE_BGR_MEAN, CODEBOOK_SIZE
from flax_squeezenet.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD
from flax_squeezenet.zoo import layers
from flax_squeezenet.zoo.stages import V1_0

NET_MODEL = "squeezenet1_0"
NET_CONVOLUTIONS = tuple(layers.convolutions(layers.layer_plan(V1_0, classifier_padding=1)))
CONV_NAMES = tuple(conv.name for conv in NET_CONVOLUTIONS)


def unfold_caffe_input(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `deepcompression.fold_caffe_input`: conv1 (out, in, kh, kw) taking
    torchvision's normalised RGB input, rewritten to take Caffe's BGR 0-255-minus-mean input."""
    scale = 255.0 * np.asarray(IMAGENET_STD, np.float64)
    shift = 255.0 * np.asarray(IMAGENET_MEAN, np.float64) - np.asarray(CAFFE_BGR_MEAN[::-1])
    rgb_kernel = kernel.astype(np.float64) / scale[None, :, None, None]
    caffe_bias = bias - np.einsum("oihw,i->o", rgb_kernel, shift)
    return rgb_kernel[:, ::-1].astype(np.float32), caffe_bias.astype(np.float32)


def _is_8_bit(leaf) -> bool:
    return isinstance(leaf, SharedKernel) and leaf.codebook.size == CODEBOOK_SIZE


def check_net_model(model: str, in_channels: int, num_classes: int) -> None:
    """Raise ValueError unless the `.net` format can hold this model."""
    if (model, in_channels, num_classes) != (NET_MODEL, 3, 1000):
        raise ValueError(f"the .net format holds only {NET_MODEL} with 3 input channels and 1000 classes, "
                         f"got {model} with {in_channels} channels and {num_classes} classes")  # fmt: skip


def _check_writable(compressed: CompressedModel) -> None:
    check_net_model(compressed.model, compressed.in_channels, compressed.num_classes)
    if compressed.input_convention != "caffe_bgr":
        raise ValueError(f"the .net format holds weights taking Caffe's input, got {compressed.input_convention!r}")
    expected = {f"{name}/{leaf}" for name in CONV_NAMES for leaf in ("kernel", "bias")}
    if set(compressed.leaves) != expected:
        raise ValueError(f"the .net format holds exactly the convolutions of {NET_MODEL}")
    if not all(_is_8_bit(compressed.leaves[f"{name}/kernel"]) for name in CONV_NAMES):
        raise ValueError("the .net format holds 8-bit shared kernels (use --bits 8)")


def _layer_bytes(kernel: SharedKernel, bias: np.ndarray) -> tuple[int, bytes]:
    """(stored entries, bytes) of one conv: codebook, bias, indices, packed gaps."""
    flat = kernel.indices.transpose(3, 2, 0, 1).ravel()  # Flax (kh, kw, in, out) to Caffe's (out, in, kh, kw)
    positions = np.flatnonzero(flat)
    gaps, is_filler = sparse.encode_positions(positions)
    indices = np.zeros(gaps.size, np.uint8)
    indices[~is_filler] = flat[positions]
    nibbles = np.concatenate([gaps, np.zeros(gaps.size % 2, np.uint8)]).reshape(-1, 2)
    packed = (nibbles[:, 0] | (nibbles[:, 1] << 4)).astype(np.uint8)
    parts = [kernel.codebook.astype("<f4"), np.asarray(bias, "<f4"), indices, packed]
    return int(gaps.size), b"".join(part.tobytes() for part in parts)


def encode_net(compressed: CompressedModel) -> bytes:
    """The bytes of the paper's `.net` file holding `compressed` (see the module's conditions)."""
    _check_writable(compressed)
    shapes = [tuple(compressed.leaves[f"{name}/kernel"].shape[i] for i in (3, 2, 0, 1)) for name in CONV_NAMES]
    expected = [conv.shape for conv in NET_CONVOLUTIONS]
    if shapes != expected:
        raise ValueError(f"the .net format holds {NET_MODEL}'s conv shapes {expected}, got {shapes}")
    counts, blobs = [], []
    for name in CONV_NAMES:
        kernel = compressed.leaves[f"{name}/kernel"]
        count, data = _layer_bytes(kernel, compressed.leaves[f"{name}/bias"])
        counts.append(count)
        blobs.append(data)
    return np.asarray(counts, "<u4").tobytes() + b"".join(blobs)


def save_net(compressed: CompressedModel, path: str | os.PathLike) -> pathlib.Path:
    """Write `compressed` to `path` in the paper's `.net` format (atomically) and return the path."""
    data = encode_net(compressed)
    with files.atomic_file(path) as temporary:
        temporary.write_bytes(data)
    return files.user_path(path)
