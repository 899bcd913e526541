"""SqueezeNet's operations in the forms XLA:CPU runs fastest, each equal to its plain formulation.

Shared by every module family (linen here, NNX alike): 3x3/2 ceil-mode max-pooling with a
hand-written gradient, 1x1 convolutions as matrix products, and max-pooling a concatenation by
pooling its parts. Why each form is faster: BENCHMARKS.md, "Where the time went, and what
changed". `tests/test_speed_equivalence.py` checks each against the plain operation, forward and
backward.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def pooled_size(size: int) -> int:
    """Output size of 3x3/2 max-pooling in ceil mode (PyTorch's ceil_mode=True, Caffe's default)."""
    return (size - 2) // 2 + 1  # ceil((size - 3) / 2) + 1; at least 2 pixels in are needed.


def ceil_mode_padding(x: jnp.ndarray) -> list[tuple[int, int]]:
    """NHWC padding that makes a VALID 3x3/2 pooling give PyTorch's ceil_mode=True output size."""
    return [(0, 0)] + [(0, (pooled_size(size) - 1) * 2 + 3 - size) for size in x.shape[1:3]] + [(0, 0)]


def _pool_windows(x: jnp.ndarray) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
    """The -inf padded input and its nine 3x3/2 window positions as strided slices, row-major."""
    padded = jnp.pad(x, ceil_mode_padding(x), constant_values=-jnp.inf)
    rows, cols = pooled_size(x.shape[1]), pooled_size(x.shape[2])
    windows = [
        padded[:, i : i + 2 * rows - 1 : 2, j : j + 2 * cols - 1 : 2, :]
        for i in range(3)
        for j in range(3)
    ]
    return padded, windows


# Speed (XLA:CPU): XLA fuses the nine strided slices into one elementwise loop, forward and
# backward, where reduce_window and the select_and_scatter of its gradient run as slower kernels.
# The gradient goes to the first maximum of each window in row-major order, as reduce_window's and
# PyTorch's do: tests/test_speed_equivalence.py::test_max_pool_matches_reduce_window_with_ties.
@jax.custom_vjp
def max_pool_3x3_ceil(x: jnp.ndarray) -> jnp.ndarray:
    """3x3/2 max-pooling of NHWC `x` with PyTorch's ceil_mode=True (bottom and right padded with -inf)."""
    return functools.reduce(jnp.maximum, _pool_windows(x)[1])


def _max_pool_3x3_ceil_forward(x: jnp.ndarray) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray]]:
    pooled = max_pool_3x3_ceil(x)
    return pooled, (x, pooled)


def _max_pool_3x3_ceil_backward(
    residuals: tuple[jnp.ndarray, jnp.ndarray], grad: jnp.ndarray
) -> tuple[jnp.ndarray]:
    x, pooled = residuals
    padded, windows = _pool_windows(x)
    zero = jnp.zeros((), grad.dtype)
    already_chosen = jnp.zeros(pooled.shape, bool)
    grad_padded = jnp.zeros(padded.shape, grad.dtype)
    for index, window in enumerate(windows):
        i, j = divmod(index, 3)
        chosen = (window == pooled) & ~already_chosen
        already_chosen = already_chosen | chosen
        # Scatter this window position's share back to the input pixels it read (stride 2).
        spread = (
            (0, 0, 0),
            (i, padded.shape[1] - i - 2 * pooled.shape[1] + 1, 1),
            (j, padded.shape[2] - j - 2 * pooled.shape[2] + 1, 1),
            (0, 0, 0),
        )
        grad_padded = grad_padded + jax.lax.pad(jnp.where(chosen, grad, zero), zero, spread)
    return (grad_padded[:, : x.shape[1], : x.shape[2], :],)


max_pool_3x3_ceil.defvjp(_max_pool_3x3_ceil_forward, _max_pool_3x3_ceil_backward)


# Speed (XLA:CPU): pooling works per channel, so pooling each part equals pooling their
# concatenation. Pooled after the concatenation, the pooling gradient has two consumers (each
# part's channels) and XLA fuses it into neither; pooled per part, each gradient is one fused
# loop. tests/test_speed_equivalence.py::test_model_and_its_gradients_match_the_plain_formulation.
def max_pool_3x3_ceil_concat(parts: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """`max_pool_3x3_ceil(jnp.concatenate(parts, axis=-1))`: a Fire module's branches, pooled."""
    return jnp.concatenate([max_pool_3x3_ceil(part) for part in parts], axis=-1)


def _spatial_padding(padding: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """A 1x1 stride-1 convolution's (height, width) zero padding: "VALID" and "SAME" pad nothing."""
    if isinstance(padding, str):
        if padding not in ("VALID", "SAME"):
            raise ValueError(f"expected padding 'VALID', 'SAME' or (low, high) pairs, got {padding!r}")
        return [(0, 0), (0, 0)]
    return [tuple(pair) for pair in padding]


# Speed (XLA:CPU): written as a matrix product over the channel axis, XLA computes a 1x1
# convolution and both its gradients as matrix multiplications; as a convolution, the kernel
# gradient becomes a convolution with a whole-image window, which is slower. Zero padding pads the
# input first. tests/test_speed_equivalence.py::test_1x1_conv_as_matmul_matches_convolution.
def conv_1x1_as_matmul(
    inputs: jnp.ndarray, kernel: jnp.ndarray, window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]], **conv_options: Any,
) -> jnp.ndarray:  # fmt: skip
    """`lax.conv_general_dilated` for NHWC inputs and a (1, 1, in, out) kernel with stride 1.

    Takes `nn.Conv(conv_general_dilated=...)`'s arguments, so an `nn.Conv` keeps its parameters;
    `padding` is "VALID", "SAME" or explicit (low, high) pairs for height and width.
    """
    if kernel.shape[:2] != (1, 1) or tuple(window_strides) != (1, 1):
        raise ValueError(f"expected a 1x1 kernel with stride 1, got {kernel.shape}, {window_strides}")
    pads = _spatial_padding(padding)
    if any(low or high for low, high in pads):
        inputs = jnp.pad(inputs, [(0, 0), *pads, (0, 0)])
    contract_channels = (((inputs.ndim - 1,), (0,)), ((), ()))
    return jax.lax.dot_general(
        inputs, kernel[0, 0], contract_channels, precision=conv_options.get("precision")
    )
