"""A compressed model in memory: shared-weight kernels (a codebook and an index per weight, index 0
holding 0.0 for pruned weights), float biases, and what model they make."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.traverse_util
import numpy as np

from flax_squeezenet.weights.conventions import IMAGENET, InputConvention
from flax_squeezenet.weights.deepcompression import fold_caffe_input

MAX_BITS = 8


@dataclasses.dataclass(frozen=True)
class SharedKernel:
    """A kernel stored as `codebook[indices]`; `codebook[0] == 0` marks pruned weights."""

    codebook: np.ndarray  # float32, (2**bits,)
    indices: np.ndarray  # integer, the kernel's shape

    @property
    def bits(self) -> int:
        return int(self.codebook.size).bit_length() - 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.indices.shape)

    def dense(self) -> np.ndarray:
        """The kernel (float32) these indices and codebook stand for."""
        return self.codebook[self.indices]


def check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits per weight must be an integer from 1 to {MAX_BITS}, got {bits!r}")



# How the model expects its input: torchvision's normalised RGB, or Caffe's BGR 0-255 minus mean
# (the paper's `.net` file; conv1 is then folded at load time, see `deepcompression.fold_caffe_input`).
INPUT_CONVENTIONS = ("torchvision", "caffe_bgr")

Leaf = SharedKernel | np.ndarray


@dataclasses.dataclass(frozen=True)
class CompressedModel:
    """Weights of the variant `model` (a key of `MODELS`) built with `model_kwargs`, by parameter
    path ("fire2/squeeze/kernel", Flax layout): kernels shared (`SharedKernel`), biases float32;
    `preprocessing` is how images are prepared for the decoded model (the source weights' own)."""

    model: str
    model_kwargs: dict[str, Any]
    input_convention: str
    leaves: dict[str, Leaf]
    preprocessing: InputConvention = IMAGENET

    def __post_init__(self):
        if self.input_convention not in INPUT_CONVENTIONS:
            raise ValueError(f"input convention must be one of {INPUT_CONVENTIONS}, got {self.input_convention!r}")

    @property
    def in_channels(self) -> int:
        return int(self.leaves["conv1/kernel"].shape[2])

    @property
    def num_classes(self) -> int:
        return int(self.leaves["classifier/kernel"].shape[-1])

    def _dense(self) -> dict[str, np.ndarray]:
        return {
            path: leaf.dense() if isinstance(leaf, SharedKernel) else np.asarray(leaf, np.float32)
            for path, leaf in self.leaves.items()
        }  # fmt: skip

    def stored_params(self) -> dict[str, Any]:
        """The params as stored: for "caffe_bgr", conv1 still takes Caffe's input."""
        return flax.traverse_util.unflatten_dict(self._dense(), sep="/")

    def params(self) -> dict[str, Any]:
        """The Flax params (float32 numpy) these weights decode to, taking torchvision's input."""
        flat = self._dense()
        if self.input_convention == "caffe_bgr":
            kernel, bias = fold_caffe_input(flat["conv1/kernel"].transpose(3, 2, 0, 1), flat["conv1/bias"])
            flat["conv1/kernel"], flat["conv1/bias"] = kernel.transpose(2, 3, 1, 0), bias
        return flax.traverse_util.unflatten_dict(flat, sep="/")
