"""The SqueezeNet paper's Deep Compression v1.0 model (pruned, 8-bit weight-shared, 0.66 MB).

File layout (`.net`): 26 little-endian uint32 counts of stored entries, one per conv in network
order; then per conv a 256-entry fp32 codebook, the fp32 bias, one uint8 codebook index per stored
entry, and 4-bit position deltas packed two per byte (low nibble first). Entry j sits at flat
position cumsum(delta + 1) - 1 of the (out, in, kh, kw) kernel; all other weights are zero.

The model was trained in Caffe, which feeds BGR images in 0-255 minus the mean (104, 117, 123).
`conv1` has no padding, so that input convention folds exactly into its kernel and bias: the
loaded model takes the same torchvision-normalised RGB input as every other model here. Caffe's
conv10 pads by 1, which adds a border of relu(bias) to the map that global pooling averages; the
loaded model is built with `classifier_padding=1` (`MODEL_KWARGS`), so its logits are Caffe's
(tests/test_torch_parity.py::test_deep_compression_logits_match_caffe).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

from flax_squeezenet.weights.convert import Params, from_conv_sequence
from flax_squeezenet.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD
from flax_squeezenet.zoo.layers import convolutions, layer_plan
from flax_squeezenet.zoo.stages import V1_0

MODEL = "squeezenet1_0"
MODEL_KWARGS: dict[str, Any] = {"classifier_padding": 1}  # Caffe's conv10: pad 1
CAFFE_BGR_MEAN = (104.0, 117.0, 123.0)
CODEBOOK_SIZE = 256


def _decode(data: memoryview, offset: int, shape: tuple[int, ...], count: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One conv's (kernel, bias) and the offset after it."""

    def take(n: int, dtype: str) -> np.ndarray:
        nonlocal offset
        array = np.frombuffer(data, dtype=dtype, count=n, offset=offset)
        offset += array.nbytes
        return array

    codebook = take(CODEBOOK_SIZE, "<f4")
    bias = take(shape[0], "<f4").copy()
    indices = take(count, "u1")
    packed = take((count + 1) // 2, "u1")
    deltas = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:count]
    positions = np.cumsum(deltas.astype(np.int64) + 1) - 1
    size = int(np.prod(shape))
    if count and positions[-1] >= size:
        raise ValueError(f"stored entries run past the end of a kernel of shape {shape}")
    kernel = np.zeros(size, np.float32)
    kernel[positions] = codebook[indices]
    return kernel.reshape(shape), bias, offset


def fold_caffe_input(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv1 (out, in, kh, kw) taking Caffe's BGR 0-255-minus-mean input, rewritten to take
    torchvision's normalised RGB input x: Caffe's input is 255 * (std * x + mean) - bgr_mean."""
    rgb_kernel = kernel[:, ::-1]
    scale = 255.0 * np.asarray(IMAGENET_STD, np.float64)
    shift = 255.0 * np.asarray(IMAGENET_MEAN, np.float64) - np.asarray(CAFFE_BGR_MEAN[::-1])
    folded_kernel = rgb_kernel * scale[None, :, None, None]
    folded_bias = bias + np.einsum("oihw,i->o", rgb_kernel.astype(np.float64), shift)
    return folded_kernel.astype(np.float32), folded_bias.astype(np.float32)


def read_convolutions(path: str | os.PathLike) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every conv's (kernel (out, in, kh, kw), bias) in the file's (network) order, as Caffe uses
    them: conv1 takes BGR 0-255-minus-mean input."""
    data = memoryview(pathlib.Path(path).read_bytes())
    shapes = [conv.shape for conv in convolutions(layer_plan(V1_0, **MODEL_KWARGS))]
    header = 4 * len(shapes)
    if len(data) < header:
        raise ValueError(f"{path} is too short for a Deep Compression SqueezeNet v1.0 file")
    counts = np.frombuffer(data, "<u4", count=len(shapes))
    convs, offset = [], header
    try:
        for shape, count in zip(shapes, counts):
            kernel, bias, offset = _decode(data, offset, shape, int(count))
            convs.append((kernel, bias))
    except ValueError as error:
        raise ValueError(f"{path} is not a Deep Compression SqueezeNet v1.0 file: {error}") from None
    if offset != len(data):
        raise ValueError(f"{path} has {len(data) - offset} bytes more than a Deep Compression SqueezeNet v1.0 file")
    return convs


def load_deep_compression(path: str | os.PathLike, *, fold_input: bool = True) -> tuple[str, dict[str, Any], Params]:
    """("squeezenet1_0", model options, Flax params) from the paper's compressed `.net` file.

    The options (`MODEL_KWARGS`: `classifier_padding=1`) make `create_model` build Caffe's net,
    whose logits these params give. With `fold_input` (the default) conv1 is rewritten to take
    torchvision-normalised RGB input (see `fold_caffe_input`); without it the params expect
    Caffe's BGR 0-255-minus-mean input.
    """
    convs = read_convolutions(path)
    if fold_input:
        convs[0] = fold_caffe_input(*convs[0])
    return MODEL, dict(MODEL_KWARGS), from_conv_sequence(convs, V1_0)
