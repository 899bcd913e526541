"""Adaptive rounding of convolution weights (AdaRound, Nagel et al. 2020), with bias correction:
onto the int8 grid (`round_to_int8`) or any other (`compression.adaptive`: shared-weight codebooks).

Round-to-nearest per-channel int8 weights move 2-3% of top-1 classes of squeezenet1_1 by
themselves (BENCHMARKS.md, "The trap of issue #13"). Here each weight of a convolution is rounded
up or down to minimise the error of the layer's output on calibration inputs, and the bias absorbs
the remaining mean shift. The inputs enter through their moments (`PairedMoments`): after bias
correction the output error of rounded weights `q` is `(w - q) C (w - q)'` per output channel, `C`
the inputs' covariance, plus a cross term when earlier layers are rounded already. The int8 scale
of each output channel is the one `onnxruntime.quantization` computes (max |w| / 127) and every
channel keeps its extreme at +-127, so `quantize_static` re-derives the same scale and reproduces
these integers exactly
(tests/test_int8.py::test_adaround_weights_survive_quantize_static_and_fit_the_int8_model_closer).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

WEIGHT_ROUNDINGS = ("nearest", "adaround")  # the choices of `save_onnx` and `compress`
INT8_MAX = 127
STEPS = 2000
REGULARISATION = 0.01  # weight of the term that pushes each soft rounding to 0 or 1
LEARNING_RATE = 1e-2
WARMUP = 0.2  # share of the steps optimised without the regularisation term
ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch, as in the paper


@dataclasses.dataclass(frozen=True)
class InputMoments:
    """Mean and covariance of a convolution's input patches (rows of length in_channels * kh * kw)."""

    mean: np.ndarray
    covariance: np.ndarray

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> InputMoments:
        """The moments of (samples, features) patch rows."""
        rows = np.asarray(rows, np.float64)
        mean = rows.mean(0)
        centred = rows - mean
        return cls(mean=mean, covariance=centred.T @ centred / len(rows))


@dataclasses.dataclass(frozen=True)
class PairedMoments:
    """A conv's input patches in the partly rounded model (`rounded`: their moments), with `cross`,
    their covariance with the source model's patches minus theirs, and `source_mean`, the mean of
    the source model's patches."""

    rounded: InputMoments
    cross: np.ndarray
    source_mean: np.ndarray

    def bias_shift(self, weights: np.ndarray, rounded: np.ndarray) -> np.ndarray:
        """What the bias adds so that the rounded layer's mean output is the source layer's (rows (out, fan_in))."""
        return np.asarray(weights, np.float64) @ self.source_mean - np.asarray(rounded, np.float64) @ self.rounded.mean


def channel_scales(weights: np.ndarray) -> np.ndarray:
    """Per output channel (rows of `weights`, shape (out, fan_in)) scale max |w| / 127, as onnxruntime's."""
    return (np.abs(weights).max(1, keepdims=True) / np.float32(INT8_MAX)).astype(np.float32)


def _rectified_sigmoid(v: jax.Array) -> jax.Array:
    return jnp.clip(jax.nn.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("steps",))
def round_up_or_down(weights, lower, upper, covariance, cross, steps: int = STEPS):
    """Per weight of `weights` (out, fan_in), True where AdaRound takes `upper` rather than `lower`
    (the candidate values either side of it; equal where the weight has one choice), minimising
    the error of the source layer's output.

    The inputs the rounded layer sees may differ from the source's (earlier layers rounded
    already): `covariance` is theirs and `cross` their covariance with the source inputs'
    difference from them (zero when they are the same, leaving `(w - q) C (w - q)'`)."""
    gap = upper - lower
    pull = 2 * weights @ cross.T
    fraction = jnp.where(gap > 0, (weights - lower) / jnp.where(gap > 0, gap, 1), 0.0)

    def rounded(up: jax.Array) -> jax.Array:
        return lower + up * gap

    norm = jnp.trace(covariance) * jnp.mean(weights**2) + 1e-12

    def loss(v, beta, regularisation):
        difference = weights - rounded(_rectified_sigmoid(v))
        error = jnp.sum((difference @ covariance) * difference + difference * pull) / norm
        binary = jnp.sum(1 - jnp.abs(2 * _rectified_sigmoid(v) - 1) ** beta) / weights.size
        return error + regularisation * binary

    optimizer = optax.adam(LEARNING_RATE)

    def step(carry, i):
        v, state = carry
        progress = i / steps
        beta = 20 + (2 - 20) * jnp.clip((progress - WARMUP) / (1 - WARMUP), 0, 1)
        grad = jax.grad(loss)(v, beta, jnp.where(progress < WARMUP, 0.0, REGULARISATION))
        updates, state = optimizer.update(grad, state, v)
        return (optax.apply_updates(v, updates), state), None

    start = -jnp.log((ZETA - GAMMA) / (fraction - GAMMA) - 1)  # the soft rounding starts at the weight
    (v, _), _ = jax.lax.scan(step, (start, optimizer.init(start)), jnp.arange(steps))
    return (_rectified_sigmoid(v) >= 0.5) & (gap > 0)


def round_to_int8(weights: np.ndarray, bias: np.ndarray, moments: PairedMoments) -> tuple[np.ndarray, np.ndarray]:
    """(weights on the int8 grid, corrected bias) for a convolution with `weights` (out, fan_in).

    The returned weights are integers times `channel_scales(weights)`, each channel's extreme at
    +-127, each rounded up or down to keep the layer's output on `moments`' inputs closest to the
    source's; the bias takes the remaining mean shift.
    """
    weights = np.asarray(weights, np.float32)
    scales = channel_scales(weights)
    levels = weights / scales
    extreme = np.abs(levels) >= INT8_MAX - 1e-4  # kept at +-127 so that the scale is unchanged
    floor = np.floor(levels)
    lower = np.where(extreme, np.round(levels), floor) * scales
    upper = np.where(extreme, np.round(levels), floor + 1) * scales
    arrays = (weights, lower, upper, moments.rounded.covariance, moments.cross)
    up = np.asarray(round_up_or_down(*(jnp.asarray(a, jnp.float32) for a in arrays)))
    snapped = np.where(up, upper, lower).astype(np.float32)
    return snapped, (np.asarray(bias, np.float64) + moments.bias_shift(weights, snapped)).astype(np.float32)
