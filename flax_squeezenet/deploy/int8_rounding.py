"""int8 weights by adaptive rounding, for the int8 ONNX export (`save_onnx(..., weight_rounding="adaround")`).

Each convolution's weights are rounded up or down on their per-channel int8 grid
(`rounding.round_to_int8`), layer after layer (`compression.adaptive.round_layer_by_layer`), each
fitted to the float layer's output from the inputs the int8 model gives it: the earlier layers
rounded, and the activations rounded to uint8 over their calibration ranges as
`onnxruntime.quantization.quantize_static` (QDQ, MinMax) rounds them (`Uint8Activations`).
`quantize_static` then keeps these integers. Agreement with float32 on held-back photos:
BENCHMARKS.md, "int8 ONNX".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from flax_squeezenet.compression.adaptive import (
    BATCH_SIZE,
    conv_inputs,
    kernel_rows,
    round_layer_by_layer,
    rows_to_kernel,
)
from flax_squeezenet.compression.rounding import round_to_int8

UINT8_MAX = 255


def _uint8(values: jax.Array, low: float, high: float) -> jax.Array:
    """`values` rounded to the 256 levels spanning [low, high] (0 among them), as QuantizeLinear then DequantizeLinear."""
    scale = max(high - low, 1e-12) / UINT8_MAX
    zero_point = round(-low / scale)
    return (jnp.clip(jnp.round(values / scale) + zero_point, 0, UINT8_MAX) - zero_point) * scale


@dataclasses.dataclass(frozen=True)
class Uint8Activations:
    """Each conv's input rounded to uint8 over its calibration range (`input_ranges`), and its output
    over [0, its largest] (`output_highs`: a ReLU follows every SqueezeNet conv, and onnxruntime
    quantizes the ReLU's output)."""

    input_ranges: Mapping[str, tuple[float, float]]
    output_highs: Mapping[str, float]

    def inputs(self, path: str, inputs: jax.Array) -> jax.Array:
        return _uint8(inputs, *self.input_ranges[path])

    def outputs(self, path: str, outputs: jax.Array) -> jax.Array:
        return _uint8(outputs, 0.0, self.output_highs[path])


class _Extremes:
    """A `ConvSimulation` that changes nothing and records each conv's input extremes and largest output."""

    def __init__(self):
        self.input_ranges: dict[str, tuple[jax.Array, jax.Array]] = {}
        self.output_highs: dict[str, jax.Array] = {}

    def inputs(self, path: str, inputs: jax.Array) -> jax.Array:
        self.input_ranges[path] = (jnp.min(inputs), jnp.max(inputs))
        return inputs

    def outputs(self, path: str, outputs: jax.Array) -> jax.Array:
        self.output_highs[path] = jnp.max(outputs)
        return outputs


def calibrated_activations(module: nn.Module, params: Any, images: np.ndarray) -> Uint8Activations:
    """The `Uint8Activations` of `module` calibrated on `images`: each range the smallest and largest
    value seen, widened to take in 0 (as MinMax calibration widens them)."""

    @jax.jit
    def extremes(batch):
        seen = _Extremes()
        conv_inputs(module, params, batch, seen)
        return seen.input_ranges, seen.output_highs

    ranges: dict[str, tuple[float, float]] = {}
    highs: dict[str, float] = {}
    for start in range(0, len(images), BATCH_SIZE):
        seen, outputs = extremes(jnp.asarray(images[start : start + BATCH_SIZE]))
        for path, (low, high) in seen.items():
            known = ranges.get(path, (0.0, 0.0))
            ranges[path] = (min(known[0], float(low)), max(known[1], float(high)))
            highs[path] = max(highs.get(path, 0.0), float(outputs[path]))
    return Uint8Activations(ranges, highs)


def adaround_int8(module: nn.Module, variables: Mapping[str, Any], images: np.ndarray,
                  progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """`variables` with every conv kernel on its per-channel int8 grid (integers times max |w| / 127,
    each channel's extreme at +-127) and its bias corrected, fitted on `images` (NHWC, as `module` takes them)."""
    params = variables["params"]
    flat = {path: np.asarray(leaf, np.float32) for path, leaf in flax.traverse_util.flatten_dict(params, sep="/").items()}
    layers = [path.removesuffix("/kernel") for path, leaf in flat.items() if path.endswith("/kernel") and leaf.ndim == 4]

    def round_layer(layer, kernel, bias, moments):
        rows, corrected = round_to_int8(kernel_rows(kernel), bias, moments)
        dense = rows_to_kernel(rows, kernel.shape)
        return dense, dense, corrected

    simulation = calibrated_activations(module, params, images)
    rounded = round_layer_by_layer(module, flat, layers, round_layer, images, simulation=simulation, progress=progress)
    return {**variables, "params": flax.traverse_util.unflatten_dict({**flat, **rounded}, sep="/")}
