"""LiteRT (TensorFlow Lite) export: float32, or full-integer int8 for microcontrollers and NPUs.

We write the flatbuffer ourselves, with the generated object API the `ai-edge-litert` wheel ships:
no TensorFlow, and real CONV_2D / MAX_POOL_2D / CONCATENATION ops straight from the layer plan, as
the ONNX writer (`flax_squeezenet.deploy.onnx`) does.

The graph computes `SqueezeNet.apply` in eval mode on NHWC input "images" and returns "logits"
(batch, num_classes): CONV_2D with fused RELU (kernels OHWI), MAX_POOL_2D (ceil mode as SAME
padding for even sizes, VALID for odd ones, PADV2 with the lowest value otherwise), CONCATENATION,
ADD (bypass), PAD for a padded classifier, MEAN over height and width, RESHAPE.

A file written with the weights' input convention (`preprocessing`) is one an app loads as it is:
its input is the resized, center-cropped RGB (or grayscale) pixels scaled to [0, 1], the
convention's mean, std and channel order folded into the stem convolution (MediaPipe normalizes
with one mean and std for all channels), and it carries LiteRT model metadata
(`flax_squeezenet.tflite_metadata`): that normalization, the colour space, the class names as
its labels file, a name and a description, so MediaPipe's `ImageClassifier` runs it with no
option and names the classes (tests/test_mediapipe.py); its scores are the logits. It also
carries the convention as the metadata entry "preprocessing" (`read_preprocessing`). Without a
convention the input is the model's own.

The int8 file is full-integer: uint8 input (0-255 pixels with a convention, else the calibrated
range) and uint8 logits, which MediaPipe accepts, QUANTIZE ops to and from int8 inside, int8
activations (ranges from the float model on calibration images) and per-channel symmetric int8
weights with int32 biases, corrected for the mean error the weights' rounding adds to each
output channel on calibration images (Nagel et al. 2019, "Data-Free Quantization", empirical
bias correction; tests/test_tflite.py::test_int8_agrees_with_float_on_held_back_photos); each
Fire module's concatenation and both its expand convolutions share one quantization, as TFLite's
int8 CONCATENATION requires. Needs `ai-edge-litert` (the `litert` extra); the rest of the library
does not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_squeezenet.compression.rounding import WEIGHT_ROUNDINGS
from flax_squeezenet.deploy import onnx_int8, tflite_metadata
from flax_squeezenet.storage import files
from flax_squeezenet.weights.conventions import InputConvention
from flax_squeezenet.weights.preprocess import CROP_SIZE
from flax_squeezenet.zoo.layers import Convolution, Layer
from flax_squeezenet.zoo.models import SqueezeNet
from flax_squeezenet.zoo.ops import max_pool_3x3_ceil, pooled_size

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
METADATA_PREPROCESSING = "preprocessing"  # the metadata entry holding the input convention (JSON)
INT8_MIN, INT8_MAX = -128, 127
UINT8_OFFSET = 128  # a uint8 zero point is the int8 one plus this (same scale): QUANTIZE shifts exactly
PIXEL_RANGE = (0.0, 1.0)  # the input of a file with a convention: pixels / 255
# An inner activation's int8 range ends at the largest per-image 99.99th percentile, not at the
# largest value: the few larger values saturate and the rest get a finer scale. The input and the
# logits keep their whole range (tests/test_tflite.py::test_int8_agrees_with_float_on_held_back_photos).
RANGE_QUANTILE = 0.9999
# Op versions as TensorFlow's converter stamps them for these ops in float32 and in int8 (the
# runtime's minimum version able to run each).
FLOAT_VERSIONS = {"CONV_2D": 1, "MAX_POOL_2D": 1, "CONCATENATION": 1, "ADD": 1, "PAD": 1, "PADV2": 1,
                  "MEAN": 1, "RESHAPE": 1}  # fmt: skip
INT8_VERSIONS = {"CONV_2D": 3, "MAX_POOL_2D": 2, "CONCATENATION": 2, "ADD": 2, "PAD": 2, "PADV2": 2,
                 "MEAN": 2, "RESHAPE": 1, "QUANTIZE": 1}  # fmt: skip


def require_litert() -> Any:
    """The generated TFLite schema module of `ai-edge-litert`; ImportError naming the extra when absent."""
    try:
        import flatbuffers  # noqa: F401  (ai-edge-litert depends on it)
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise ImportError("LiteRT export needs ai-edge-litert: install with pip install -e '.[litert]'") from None
    return schema_py_generated


def _parameters(params: Mapping[str, Any], conv: Convolution) -> tuple[np.ndarray, np.ndarray]:
    """(kernel OHWI, bias) float32 of the plan's `conv`; ValueError naming a missing or misshapen one."""
    leaf: Any = params
    for key in conv.path:
        if key not in leaf:
            raise ValueError(f"expected a parameter {conv.name} for this model; it is missing")
        leaf = leaf[key]
    kernel = np.asarray(leaf["kernel"], np.float32).transpose(3, 0, 1, 2)
    if kernel.shape != (conv.out_channels, conv.kernel, conv.kernel, conv.in_channels):
        raise ValueError(
            f"expected parameter {conv.name}/kernel of shape (kh, kw, in, out) "
            f"{(conv.kernel, conv.kernel, conv.in_channels, conv.out_channels)}, got {np.shape(leaf['kernel'])}"
        )
    return kernel, np.asarray(leaf["bias"], np.float32)


def _walk(graph: Any, plan: Sequence[Layer], images: Any) -> Any:
    """The plan's eval-mode computation on `images`, as calls to `graph` (the reference or the writer)."""
    x = images
    *backbone, classifier = plan
    for layer in backbone:
        if layer.kind == "max_pool":
            x = graph.max_pool(x, layer.name)
        elif layer.kind == "fire":
            x = _fire(graph, x, layer)
        else:
            x = graph.conv(x, layer.convs[0])
    return graph.global_average(graph.conv(x, classifier.convs[0]))


def _fire(graph: Any, x: Any, layer: Layer) -> Any:
    squeeze, expand1x1, expand3x3 = layer.convs
    squeezed = graph.conv(x, squeeze)
    y = graph.concat([graph.conv(squeezed, expand1x1), graph.conv(squeezed, expand3x3)], f"{layer.name}/concat")
    if layer.shortcut == "identity":
        return graph.add(y, x, f"{layer.name}/bypass")
    if layer.shortcut == "projection":
        return graph.add(y, graph.conv(x, layer.shortcut_conv, relu=False), f"{layer.name}/bypass")
    return y


class _Reference:
    """The plan's float computation in JAX, recording each named tensor's min, max and largest
    per-image `RANGE_QUANTILE` over the batch, and the per-channel mean of each convolution's input."""

    def __init__(self, params: Mapping[str, Any]):
        self.params = params
        self.ranges: dict[str, tuple[jnp.ndarray, ...]] = {}
        self.input_means: dict[str, jnp.ndarray] = {}

    def record(self, name: str, x: jnp.ndarray) -> jnp.ndarray:
        per_image = x.reshape(len(x), -1)
        self.ranges[name] = (jnp.min(per_image), jnp.max(per_image),
                             jnp.max(jnp.quantile(per_image, RANGE_QUANTILE, axis=1)))  # fmt: skip
        return x

    def conv(self, x: jnp.ndarray, conv: Convolution, relu: bool = True) -> jnp.ndarray:
        kernel, bias = _parameters(self.params, conv)
        self.input_means[conv.name] = jnp.mean(x, axis=(0, 1, 2))
        y = jax.lax.conv_general_dilated(
            x, jnp.asarray(kernel), (conv.stride,) * 2, [(conv.padding,) * 2] * 2,
            dimension_numbers=("NHWC", "OHWI", "NHWC"), precision=jax.lax.Precision.HIGHEST,
        ) + bias  # fmt: skip
        return self.record(conv.name, jax.nn.relu(y) if relu else y)

    def max_pool(self, x: jnp.ndarray, name: str) -> jnp.ndarray:
        return self.record(name, max_pool_3x3_ceil(x))

    def concat(self, xs: list[jnp.ndarray], name: str) -> jnp.ndarray:
        return self.record(name, jnp.concatenate(xs, axis=-1))

    def add(self, a: jnp.ndarray, b: jnp.ndarray, name: str) -> jnp.ndarray:
        return self.record(name, a + b)

    def global_average(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.record(OUTPUT_NAME, jnp.mean(x, axis=(1, 2)))


def reference_logits(module: SqueezeNet, variables: Mapping[str, Any], images_nhwc: np.ndarray) -> np.ndarray:
    """The logits of the plan walk the writer and the calibration share (equal to `module.apply`'s)."""
    reference = _Reference(variables.get("params", variables))
    return np.asarray(_walk(reference, module.plan, jnp.asarray(images_nhwc, jnp.float32)))


@dataclasses.dataclass(frozen=True)
class CalibrationStatistics:
    """What the int8 writer needs from the float model run on calibration images.

    Attributes:
      ranges: each tensor's int8 range (low, high) by the writer's tensor names.
      input_means: each convolution's mean input per channel (for the bias correction), by its name.
    """

    ranges: dict[str, tuple[float, float]]
    input_means: dict[str, np.ndarray]


def calibration_statistics(
    module: SqueezeNet, variables: Mapping[str, Any], images_nhwc: np.ndarray, batch: int = onnx_int8.CALIBRATION_BATCH,
    input_range: tuple[float, float] | None = None,
) -> CalibrationStatistics:
    """The statistics of the float model on `images_nhwc` that the int8 writer quantizes with.

    Ranges are min and max for the input (or `input_range` when the input's range is known) and
    the logits; inside, min and the largest per-image `RANGE_QUANTILE`. An expand convolution's
    range is its Fire module's concatenation's (they share a quantization).
    """
    params = variables.get("params", variables)

    @jax.jit
    def batch_statistics(images: jnp.ndarray) -> tuple[dict, dict]:
        reference = _Reference(params)
        reference.record(INPUT_NAME, images)
        _walk(reference, module.plan, images)
        return reference.ranges, reference.input_means

    images_nhwc = np.asarray(images_nhwc, np.float32)
    if len(images_nhwc) == 0:
        raise ValueError("expected at least one calibration image")
    starts = range(0, len(images_nhwc), batch)
    chunks = [jax.device_get(batch_statistics(images_nhwc[i : i + batch])) for i in starts]
    weights = [len(images_nhwc[i : i + batch]) for i in starts]
    ranges = {}
    for name in chunks[0][0]:
        high = 1 if name in (INPUT_NAME, OUTPUT_NAME) else 2
        ranges[name] = (float(min(r[name][0] for r, _ in chunks)), float(max(r[name][high] for r, _ in chunks)))
    for layer in module.plan:
        if layer.kind == "fire":
            for conv in layer.convs[1:]:
                ranges[conv.name] = ranges[f"{layer.name}/concat"]
    if input_range is not None:
        ranges[INPUT_NAME] = input_range
    input_means = {name: np.average([m[name] for _, m in chunks], axis=0, weights=weights) for name in chunks[0][1]}
    return CalibrationStatistics(ranges, input_means)


def _convention_arrays(convention: InputConvention) -> tuple[np.ndarray, np.ndarray, slice]:
    """(mean, std) in the convention's channel order, and the slice taking RGB to that order."""
    order = slice(None, None, -1) if convention.channel_order == "BGR" else slice(None)
    return np.asarray(convention.mean, np.float64), np.asarray(convention.std, np.float64), order


def with_normalization_folded(module: SqueezeNet, variables: Mapping[str, Any],
                              convention: InputConvention) -> dict[str, Any]:  # fmt: skip
    """The parameters of the model that computes `module` on `convention`'s normalized input from
    pixels in [0, 1] (RGB, or grayscale): mean, std and channel order folded into the stem
    convolution, exactly, since it has no padding."""
    stem = module.plan[0]
    if stem.kind != "conv" or stem.convs[0].padding:
        raise ValueError(f"expected the model to start with an unpadded convolution, got {stem.name} ({stem.kind})")
    params = dict(variables.get("params", variables))
    (name,) = stem.convs[0].path
    kernel, bias = np.asarray(params[name]["kernel"], np.float64), np.asarray(params[name]["bias"], np.float64)
    mean, std, order = _convention_arrays(convention)
    folded_bias = bias - np.einsum("hwio,i->o", kernel, mean / std)
    folded_kernel = (kernel / std[None, None, :, None])[:, :, order, :]
    params[name] = {"kernel": folded_kernel.astype(np.float32), "bias": folded_bias.astype(np.float32)}
    return {"params": params}


def to_pixels(images_nhwc: np.ndarray, convention: InputConvention) -> np.ndarray:
    """Images normalized by `convention` back to its pixels in [0, 1] (RGB, or grayscale): the
    input of a file written with that convention."""
    mean, std, order = _convention_arrays(convention)
    return (np.asarray(images_nhwc, np.float64) * std + mean)[..., order].astype(np.float32)


def _activation_quantization(schema: Any, low: float, high: float) -> Any:
    """Asymmetric int8 parameters covering [low, high] and 0 exactly."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / (INT8_MAX - INT8_MIN) if high > low else 1.0
    zero_point = int(np.clip(round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX))
    return schema.QuantizationParametersT(scale=[float(scale)], zeroPoint=[zero_point])


@dataclasses.dataclass
class _Tensor:
    index: int
    shape: tuple[int, ...]  # NHWC with the batch as written (1 when resizable)


class _Writer:
    """Accumulates the TFLite subgraph: tensors, constant buffers, operators and operator codes."""

    def __init__(self, schema: Any, params: Mapping[str, Any], statistics: CalibrationStatistics | None,
                 resizable_batch: bool):  # fmt: skip
        self.schema, self.params, self.statistics = schema, params, statistics
        self.resizable_batch = resizable_batch
        self.versions = FLOAT_VERSIONS if statistics is None else INT8_VERSIONS
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0: the empty one activations point to
        self.operators: list[Any] = []
        self.opcodes: dict[str, int] = {}

    @property
    def int8(self) -> bool:
        return self.statistics is not None

    def _add_tensor(self, name: str, shape: Sequence[int], dtype: int, quantization: Any = None,
                    data: np.ndarray | None = None) -> _Tensor:  # fmt: skip
        buffer = 0
        if data is not None:
            buffer = len(self.buffers)
            self.buffers.append(self.schema.BufferT(data=np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)))
        tensor = self.schema.TensorT(shape=list(shape), type=dtype, buffer=buffer, name=name, quantization=quantization)
        if self.resizable_batch and data is None:
            tensor.shapeSignature = [-1, *shape[1:]]
        self.tensors.append(tensor)
        return _Tensor(len(self.tensors) - 1, tuple(shape))

    def activation(self, name: str, shape: Sequence[int], quantization: Any = None) -> _Tensor:
        """A tensor computed by the graph: float32, or int8 with `quantization` (default: its calibrated range)."""
        if not self.int8:
            return self._add_tensor(name, shape, self.schema.TensorType.FLOAT32)
        if quantization is None:
            quantization = self.activation_quantization(name)
        return self._add_tensor(name, shape, self.schema.TensorType.INT8, quantization)

    def constant(self, name: str, array: np.ndarray, quantization: Any = None) -> _Tensor:
        dtype = {np.dtype(np.float32): "FLOAT32", np.dtype(np.int32): "INT32", np.dtype(np.int8): "INT8"}[array.dtype]
        return self._add_tensor(name, array.shape, getattr(self.schema.TensorType, dtype), quantization, array)

    def quantization_of(self, tensor: _Tensor) -> Any:
        return self.tensors[tensor.index].quantization

    def operator(self, op: str, inputs: list[_Tensor], output: _Tensor, options_type: str = "NONE",
                 options: Any = None) -> _Tensor:  # fmt: skip
        if op not in self.opcodes:
            self.opcodes[op] = len(self.opcodes)
        self.operators.append(self.schema.OperatorT(
            opcodeIndex=self.opcodes[op], inputs=[t.index for t in inputs], outputs=[output.index],
            builtinOptionsType=getattr(self.schema.BuiltinOptions, options_type), builtinOptions=options,
        ))  # fmt: skip
        return output

    def pad(self, x: _Tensor, name: str, paddings: list[list[int]], op: str = "PAD", value: Any = None) -> _Tensor:
        """`x` padded by `paddings` ((before, after) per NHWC axis) with zeros, or with `value` (PADV2)."""
        shape = tuple(size + before + after for size, (before, after) in zip(x.shape, paddings))
        output = self.activation(name, shape, self.quantization_of(x))
        inputs = [x, self.constant(f"{name}/paddings", np.asarray(paddings, np.int32))]
        if value is not None:
            inputs.append(self.constant(f"{name}/value", np.asarray([value]), self.quantization_of(x)))
        options = self.schema.PadOptionsT() if op == "PAD" else self.schema.PadV2OptionsT()
        return self.operator(op, inputs, output, "PadOptions" if op == "PAD" else "PadV2Options", options)

    def conv(self, x: _Tensor, conv: Convolution, relu: bool = True) -> _Tensor:
        """CONV_2D (+ fused RELU) of the plan's `conv`; SAME where it equals the conv's zero padding, else PAD."""
        kernel, bias = _parameters(self.params, conv)
        padding = self.schema.Padding.VALID
        if conv.padding and conv.stride == 1 and 2 * conv.padding == conv.kernel - 1:
            padding = self.schema.Padding.SAME
        elif conv.padding:
            x = self.pad(x, f"{conv.name}/pad", [[0, 0], [conv.padding] * 2, [conv.padding] * 2, [0, 0]])
        batch, height, width, _ = x.shape
        if padding == self.schema.Padding.VALID:
            height, width = ((size - conv.kernel) // conv.stride + 1 for size in (height, width))
        output = self.activation(conv.name, (batch, height, width, conv.out_channels))
        weights = self._conv_constants(x, conv, kernel, bias)
        options = self.schema.Conv2DOptionsT(
            padding=padding, strideW=conv.stride, strideH=conv.stride,
            fusedActivationFunction=self.schema.ActivationFunctionType.RELU if relu else 0,
        )  # fmt: skip
        return self.operator("CONV_2D", [x, *weights], output, "Conv2DOptions", options)

    def _conv_constants(self, x: _Tensor, conv: Convolution, kernel: np.ndarray, bias: np.ndarray) -> list[_Tensor]:
        """The kernel and bias tensors: float32, or int8 per output channel symmetric and int32
        (the bias corrected for the kernel's rounding, see the module docstring)."""
        if not self.int8:
            return [self.constant(f"{conv.name}/kernel", kernel), self.constant(f"{conv.name}/bias", bias)]
        largest = np.abs(kernel).reshape(len(kernel), -1).max(axis=1)
        weight_scale = np.where(largest > 0, largest / INT8_MAX, 1.0).astype(np.float32)
        quantized = np.clip(np.round(kernel / weight_scale[:, None, None, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
        rounding = quantized * weight_scale[:, None, None, None] - kernel
        bias = bias - rounding.sum(axis=(1, 2)) @ self.statistics.input_means[conv.name]
        (input_scale,) = self.quantization_of(x).scale
        bias_scale = (np.float64(input_scale) * weight_scale).astype(np.float32)
        limit = np.iinfo(np.int32).max
        quantized_bias = np.clip(np.round(bias / bias_scale.astype(np.float64)), -limit, limit).astype(np.int32)
        channels = len(kernel)
        return [
            self.constant(f"{conv.name}/kernel", quantized, self.schema.QuantizationParametersT(
                scale=weight_scale.tolist(), zeroPoint=[0] * channels, quantizedDimension=0)),
            self.constant(f"{conv.name}/bias", quantized_bias, self.schema.QuantizationParametersT(
                scale=bias_scale.tolist(), zeroPoint=[0] * channels, quantizedDimension=0)),
        ]  # fmt: skip

    def max_pool(self, x: _Tensor, name: str) -> _Tensor:
        """3x3/2 ceil-mode max pooling: SAME for even sizes and VALID for odd ones give PyTorch's
        ceil mode exactly; mixed, the even side is padded with the lowest value first."""
        batch, height, width, channels = x.shape
        extra = [size % 2 == 0 for size in (height, width)]
        padding = self.schema.Padding.SAME if all(extra) else self.schema.Padding.VALID
        if any(extra) and not all(extra):
            lowest = INT8_MIN if self.int8 else np.finfo(np.float32).min
            value = np.int8(lowest) if self.int8 else np.float32(lowest)
            x = self.pad(x, f"{name}/pad", [[0, 0], [0, int(extra[0])], [0, int(extra[1])], [0, 0]], "PADV2", value)
        output = self.activation(name, (batch, pooled_size(height), pooled_size(width), channels),
                                 self.quantization_of(x))  # fmt: skip
        options = self.schema.Pool2DOptionsT(padding=padding, strideW=2, strideH=2, filterWidth=3, filterHeight=3)
        return self.operator("MAX_POOL_2D", [x], output, "Pool2DOptions", options)

    def concat(self, xs: list[_Tensor], name: str) -> _Tensor:
        batch, height, width, _ = xs[0].shape
        output = self.activation(name, (batch, height, width, sum(x.shape[-1] for x in xs)))
        options = self.schema.ConcatenationOptionsT(axis=3)
        return self.operator("CONCATENATION", xs, output, "ConcatenationOptions", options)

    def add(self, a: _Tensor, b: _Tensor, name: str) -> _Tensor:
        return self.operator("ADD", [a, b], self.activation(name, a.shape), "AddOptions", self.schema.AddOptionsT())

    def global_average(self, x: _Tensor) -> _Tensor:
        """MEAN over height and width (kept as 1x1, which every delegate runs), then RESHAPE to (batch, classes)."""
        batch, _, _, channels = x.shape
        mean = self.activation(f"{OUTPUT_NAME}/mean", (batch, 1, 1, channels),
                               self.activation_quantization(OUTPUT_NAME))  # fmt: skip
        axes = self.constant(f"{OUTPUT_NAME}/axes", np.asarray([1, 2], np.int32))
        self.operator("MEAN", [x, axes], mean, "ReducerOptions", self.schema.ReducerOptionsT(keepDims=True))
        name = f"{OUTPUT_NAME}/int8" if self.int8 else OUTPUT_NAME  # int8: the uint8 output follows
        output = self.activation(name, (batch, channels), self.quantization_of(mean))
        shape = self.constant(f"{OUTPUT_NAME}/shape", np.asarray([-1, channels], np.int32))
        options = self.schema.ReshapeOptionsT(newShape=[-1, channels])
        return self.operator("RESHAPE", [mean, shape], output, "ReshapeOptions", options)

    def uint8_input(self, shape: Sequence[int]) -> tuple[_Tensor, _Tensor]:
        """(the uint8 input, the int8 tensor its QUANTIZE gives the graph): one scale, zero points 128 apart."""
        quantization = self.activation_quantization(INPUT_NAME)
        source = self._add_tensor(INPUT_NAME, shape, self.schema.TensorType.UINT8, self._as_uint8(quantization))
        images = self.activation(f"{INPUT_NAME}/int8", shape, quantization)
        return source, self.operator("QUANTIZE", [source], images, "QuantizeOptions", self.schema.QuantizeOptionsT())

    def uint8_output(self, x: _Tensor) -> _Tensor:
        """The int8 tensor `x` as the uint8 output `OUTPUT_NAME` (QUANTIZE: same scale, zero point + 128)."""
        quantization = self._as_uint8(self.quantization_of(x))
        output = self._add_tensor(OUTPUT_NAME, x.shape, self.schema.TensorType.UINT8, quantization)
        return self.operator("QUANTIZE", [x], output, "QuantizeOptions", self.schema.QuantizeOptionsT())

    def _as_uint8(self, quantization: Any) -> Any:
        return self.schema.QuantizationParametersT(scale=list(quantization.scale),
                                                   zeroPoint=[quantization.zeroPoint[0] + UINT8_OFFSET])  # fmt: skip

    def activation_quantization(self, name: str) -> Any:
        """int8 parameters of the tensor `name` from its calibrated range (None for float32)."""
        if not self.int8:
            return None
        if name not in self.statistics.ranges:
            raise ValueError(f"expected a calibrated range for tensor {name}; it is missing")
        return _activation_quantization(self.schema, *self.statistics.ranges[name])

    def model(self, inputs: _Tensor, outputs: _Tensor, description: str, metadata: Mapping[str, bytes]) -> Any:
        """The `ModelT` of everything written, with a "serving_default" signature and `metadata`
        (name -> bytes) as named metadata buffers."""
        schema = self.schema
        entries = []
        for name, content in metadata.items():
            entries.append(schema.MetadataT(name=name, buffer=len(self.buffers)))
            self.buffers.append(schema.BufferT(data=np.frombuffer(content, np.uint8)))
        codes = [None] * len(self.opcodes)
        for op, index in self.opcodes.items():
            code = getattr(schema.BuiltinOperator, op)
            codes[index] = schema.OperatorCodeT(deprecatedBuiltinCode=code, builtinCode=code, version=self.versions[op])
        subgraph = schema.SubGraphT(tensors=self.tensors, inputs=[inputs.index], outputs=[outputs.index],
                                    operators=self.operators, name="main")  # fmt: skip
        signature = schema.SignatureDefT(
            inputs=[schema.TensorMapT(name=INPUT_NAME, tensorIndex=inputs.index)],
            outputs=[schema.TensorMapT(name=OUTPUT_NAME, tensorIndex=outputs.index)],
            signatureKey="serving_default", subgraphIndex=0,
        )  # fmt: skip
        return schema.ModelT(version=3, operatorCodes=codes, subgraphs=[subgraph], description=description,
                             buffers=self.buffers, signatureDefs=[signature], metadata=entries)  # fmt: skip


def input_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an `image_size` given as one side or as (height, width)."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def to_tflite(
    module: SqueezeNet,
    variables: Mapping[str, Any],
    *,
    calibration: np.ndarray | None = None,
    image_size: int | tuple[int, int] = CROP_SIZE,
    batch: int | None = None,
    preprocessing: InputConvention | None = None,
    class_names: Sequence[str] | None = None,
) -> bytes:
    """The TFLite file computing `module.apply(variables, images)` (eval mode) on NHWC input.

    float32 without `calibration`; with it (NHWC images prepared as for the model), full-integer
    int8 with uint8 input and output (see the module docstring). The input is (batch, height,
    width, channels) at `image_size`; `batch=None` writes batch 1 that the interpreter may resize
    (`resize_tensor_input`; MediaPipe needs batch 1), an int fixes it. With `preprocessing` (the
    weights' input convention) the file takes pixels in [0, 1] and carries the metadata an app
    reads (module docstring); `class_names` (one per class) become its labels file.

    Raises:
      ValueError: `variables` lack a parameter the module needs or have it in another shape (the
        first one is named), the image size is under the model's minimum, or the class names
        are not one non-empty line per class.
    """
    schema = require_litert()
    import flatbuffers

    height, width = input_size(image_size)
    if min(height, width) < module.min_input_size:
        raise ValueError(f"expected height and width of at least {module.min_input_size}, got {height}x{width}")
    if batch is not None and batch < 1:
        raise ValueError(f"expected a positive batch size, got {batch}")
    labels = None if class_names is None else tflite_metadata.labels_file(class_names, module.num_classes)
    statistics = None
    if preprocessing is not None:
        variables = with_normalization_folded(module, variables, preprocessing)
        calibration = None if calibration is None else to_pixels(calibration, preprocessing)
    if calibration is not None:
        input_range = None if preprocessing is None else PIXEL_RANGE
        statistics = calibration_statistics(module, variables, calibration, input_range=input_range)
    writer = _Writer(schema, variables.get("params", variables), statistics, resizable_batch=batch is None)
    shape = (batch or 1, height, width, module.in_channels)
    if writer.int8:
        source, images = writer.uint8_input(shape)
        output = writer.uint8_output(_walk(writer, module.plan, images))
    else:
        source = writer.activation(INPUT_NAME, shape)
        output = _walk(writer, module.plan, source)
    kind = "int8 (uint8 input and output)" if writer.int8 else "float32"
    description = f"SqueezeNet image classifier, {module.num_classes} classes, {kind}, written by flax-squeezenet"
    metadata = {tflite_metadata.METADATA_NAME: _model_metadata(module, description, (height, width), preprocessing,
                                                               class_names)}  # fmt: skip
    if preprocessing is not None:
        metadata[METADATA_PREPROCESSING] = json.dumps(preprocessing.to_dict()).encode()
    builder = flatbuffers.Builder(1024)
    builder.Finish(writer.model(source, output, description, metadata).Pack(builder), file_identifier=b"TFL3")
    associated = {} if labels is None else {tflite_metadata.LABELS_FILE: labels}
    return tflite_metadata.with_associated_files(bytes(builder.Output()), associated)


def _model_metadata(module: SqueezeNet, description: str, size: tuple[int, int],
                    preprocessing: InputConvention | None, class_names: Sequence[str] | None) -> bytes:  # fmt: skip
    """The "TFLITE_METADATA" of the file `to_tflite` writes; its input described only with a convention."""
    image = None
    if preprocessing is not None:
        height, width = size
        image = tflite_metadata.ImageInput(
            name=INPUT_NAME, color_space="GRAYSCALE" if module.in_channels == 1 else "RGB", width=width,
            height=height, mean=(0.0,), std=(255.0,),
            description=f"{'grayscale' if module.in_channels == 1 else 'RGB'} pixels / 255 of the shorter side resized "
                        f"to {preprocessing.resize_size} and a {preprocessing.crop_size} center crop",
        )  # fmt: skip
    return tflite_metadata.model_metadata(
        name=f"SqueezeNet ({module.num_classes} classes)", description=description, image=image,
        output_name=OUTPUT_NAME, output_description="the logits (a softmax over them gives the probabilities)",
        class_names=class_names,
    )  # fmt: skip


def save_tflite(
    module: SqueezeNet,
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    int8: bool = False,
    calibration: np.ndarray | None = None,
    image_size: int | tuple[int, int] = CROP_SIZE,
    batch: int | None = None,
    preprocessing: InputConvention | None = None,
    class_names: Sequence[str] | None = None,
) -> pathlib.Path:
    """Write the LiteRT export of `module` to `path` (whole or not at all, mode per umask).

    With `int8`, a full-integer model calibrated on `calibration` (NHWC float32 images prepared as
    for the model). `image_size`, `batch`, `preprocessing` and `class_names` as for `to_tflite`.
    """
    if int8 != (calibration is not None):
        raise ValueError("int8 export needs calibration images, and calibration images need int8=True")
    content = to_tflite(module, variables, calibration=calibration, image_size=image_size, batch=batch,
                        preprocessing=preprocessing, class_names=class_names)  # fmt: skip
    with files.atomic_file(path) as temporary:
        temporary.write_bytes(content)
    return files.user_path(path)


def run_tflite(path: str | os.PathLike, images_nhwc: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """float32 logits of the LiteRT model at `path` on NHWC float images prepared as for the model
    (turned into the file's pixels when it carries a convention; int8 files: quantized input,
    dequantized output), in the `ai_edge_litert` interpreter."""
    require_litert()
    from ai_edge_litert.interpreter import Interpreter

    convention = read_preprocessing(path)
    if convention is not None:
        images_nhwc = to_pixels(images_nhwc, convention)
    interpreter = Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    batch = len(images_nhwc) if -1 in source["shape_signature"][:1] else int(source["shape"][0])
    interpreter.resize_tensor_input(source["index"], [batch, *source["shape"][1:]])
    interpreter.allocate_tensors()
    outputs = []
    for start in range(0, len(images_nhwc), batch):
        chunk = np.asarray(images_nhwc[start : start + batch], np.float32)
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), np.float32)])
        interpreter.set_tensor(source["index"], as_model_input(padded, source))
        interpreter.invoke()
        outputs.append(as_float_output(interpreter.get_tensor(target["index"]), target)[: len(chunk)])
    return np.concatenate(outputs)


def read_preprocessing(path: str | os.PathLike) -> InputConvention | None:
    """The input convention a LiteRT file written by `save_tflite` carries; None when it has none."""
    schema = require_litert()
    content = pathlib.Path(path).read_bytes()
    if not schema.Model.ModelBufferHasIdentifier(content, 0):
        raise ValueError(f"{path} is not a TFLite flatbuffer (expected the file identifier TFL3)")
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    for entry in model.metadata or []:
        if entry.name.decode() == METADATA_PREPROCESSING:
            values = json.loads(bytes(model.buffers[entry.buffer].data).decode())
            return InputConvention.from_dict(values, source=f"{path}'s {METADATA_PREPROCESSING} metadata")
    return None


def as_model_input(images: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """`images` as the input tensor `detail` (an interpreter's input details) takes them: quantized
    to its integer type, or as they are for float."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return images
    scale, zero_point = detail["quantization"]
    limits = np.iinfo(detail["dtype"])
    return np.clip(np.round(images / scale) + zero_point, limits.min, limits.max).astype(detail["dtype"])


def as_float_output(values: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """The output tensor's `values` as float32 (dequantized by `detail`'s quantization when integer)."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return values
    scale, zero_point = detail["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


def save_tflite_from_folder(
    module: SqueezeNet,
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    folder: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    preprocessing: InputConvention | None = None,
    batch: int | None = None,
    class_names: Sequence[str] | None = None,
    weight_rounding: str = "nearest",
) -> onnx_int8.Agreement:
    """Write the int8 LiteRT export calibrated on the images in `folder` (or the image files listed);
    compare it on the held-back ones. `weight_rounding` "adaround" first rounds the kernels to the
    same per-channel int8 grid by `int8_rounding.adaround_int8` on the calibration images (the
    writer then keeps those integers); "nearest" leaves the rounding to the writer.

    The folder is split as the int8 ONNX export splits it, and its images are prepared by
    `preprocessing`, the weights' own input convention (`onnx_int8.calibration_images`: ImageNet's
    by default for 3 channels); the returned `Agreement` compares the written file, in the LiteRT
    interpreter, with the Flax model on the held-back images. `class_names` as for `to_tflite`.
    `files.OutputIsInputError` if `path` is one of the images.
    """
    require_litert()
    calibration_files, held_back_files = onnx_int8.split_held_back(
        onnx_int8.image_files(folder) if isinstance(folder, (str, os.PathLike)) else list(folder),
        onnx_int8.HELD_BACK, onnx_int8.MAX_IMAGES,
    )
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"expected weight_rounding one of {', '.join(WEIGHT_ROUNDINGS)}, got {weight_rounding!r}")
    files.check_output_is_not_input(path, *calibration_files, *held_back_files)
    calibration = onnx_int8.calibration_images(calibration_files, module.in_channels, preprocessing)
    held_back = onnx_int8.calibration_images(held_back_files, module.in_channels, preprocessing)
    rounded = variables
    if weight_rounding == "adaround":
        from flax_squeezenet.deploy import int8_rounding  # imported when used, as save_onnx does

        rounded = int8_rounding.adaround_int8(module, variables, calibration)
    written = save_tflite(module, rounded, path, int8=True, calibration=calibration,
                          image_size=calibration.shape[1], batch=batch, preprocessing=preprocessing,
                          class_names=class_names)  # fmt: skip
    return onnx_int8.agreement(onnx_int8.flax_logits(module, variables, held_back), run_tflite(written, held_back))
