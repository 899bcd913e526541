"""Export a SqueezeNet to ONNX, written directly from its layer plan and parameters.

The graph is the one `SqueezeNet.__call__` computes for inference, in ONNX's NCHW layout: Conv,
Relu, MaxPool (3x3/2, ceil_mode=1), Concat, Add (bypass), GlobalAveragePool and Flatten, with a
dynamic batch dimension. Input "images" (batch, channels, height, width) float32, normalised as
for the Flax model; output "logits" (batch, num_classes) float32. Needs the `onnx` package
(the `export` extra); the rest of the library does not.

What a deployment needs to feed the model and name its outputs is in the model's metadata_props
(`onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`), as JSON strings:
"preprocessing" {"mean", "std" (per channel, on pixels scaled to [0, 1]), "resize_size",
"crop_size", "channel_order"} and "class_names" [name of class 0, name of class 1, ...].
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flax_squeezenet.compression.rounding import WEIGHT_ROUNDINGS
from flax_squeezenet.storage import files
from flax_squeezenet.zoo.layers import Convolution, Layer
from flax_squeezenet.zoo.models import SqueezeNet

OPSET = 17  # Supported by onnxruntime (mobile included), pnnx/ncnn and TensorRT alike.
IR_VERSION = 8  # The IR version of opset 17, so that older runtimes accept the file.


class _GraphBuilder:
    """Accumulates ONNX nodes and float32 initializers with unique names."""

    def __init__(self, params: Mapping[str, Any]):
        import onnx.helper
        import onnx.numpy_helper

        self._helper = onnx.helper
        self._numpy_helper = onnx.numpy_helper
        self.params = params
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(self._helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def conv(self, x: str, conv: Convolution) -> str:
        """Conv + bias of the plan's `conv`, from the Flax parameters at its path (HWIO -> OIHW)."""
        leaf: Any = self.params
        for key in conv.path:
            if key not in leaf:
                raise ValueError(f"expected a parameter {conv.name} for this model; it is missing")
            leaf = leaf[key]
        kernel = np.asarray(leaf["kernel"], np.float32).transpose(3, 2, 0, 1)
        if kernel.shape != conv.shape:
            raise ValueError(
                f"expected parameter {conv.name}/kernel of shape (out, in, kh, kw) {conv.shape} "
                f"for this model, got {kernel.shape}"
            )
        for suffix, array in (("kernel", kernel), ("bias", np.asarray(leaf["bias"], np.float32))):
            self.initializers.append(
                self._numpy_helper.from_array(np.ascontiguousarray(array), f"{conv.name}/{suffix}")
            )
        return self.node(
            "Conv", [x, f"{conv.name}/kernel", f"{conv.name}/bias"], f"{conv.name}/conv",
            kernel_shape=[conv.kernel] * 2, strides=[conv.stride] * 2, pads=[conv.padding] * 4,
        )  # fmt: skip

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], f"{x}/relu")

    def fire(self, x: str, layer: Layer) -> str:
        """The Fire layer: squeeze, both expands, their concatenation and the shortcut."""
        squeeze, expand1x1, expand3x3 = layer.convs
        squeezed = self.relu(self.conv(x, squeeze))
        expanded = [self.relu(self.conv(squeezed, expand1x1)), self.relu(self.conv(squeezed, expand3x3))]
        y = self.node("Concat", expanded, f"{layer.name}/concat", axis=1)
        if layer.shortcut == "identity":
            return self.node("Add", [y, x], f"{layer.name}/bypass")
        if layer.shortcut == "projection":
            return self.node("Add", [y, self.conv(x, layer.shortcut_conv)], f"{layer.name}/bypass")
        return y

    def layer(self, x: str, layer: Layer) -> str:
        """The nodes of one plan layer applied to `x`; the classifier without its global pooling."""
        if layer.kind == "max_pool":
            return self.node("MaxPool", [x], layer.name, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
        if layer.kind == "fire":
            return self.fire(x, layer)
        return self.relu(self.conv(x, layer.convs[0]))


def to_onnx(module: SqueezeNet, variables: Mapping[str, Any]) -> Any:
    """The `onnx.ModelProto` computing `module.apply(variables, images)` (eval mode) on NCHW input.

    Raises:
      ValueError: `variables` lack a parameter the module needs or have it in another shape (the
        first one is named).
    """
    import onnx
    import onnx.helper

    graph = _GraphBuilder(variables.get("params", variables))
    x = "images"
    for layer in module.plan:
        x = graph.layer(x, layer)
    x = graph.node("GlobalAveragePool", [x], "pooled")
    graph.node("Flatten", [x], "logits", axis=1)
    helper = onnx.helper
    images = helper.make_tensor_value_info(
        "images", onnx.TensorProto.FLOAT, ["batch", module.in_channels, "height", "width"]
    )
    logits = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", module.num_classes])
    model = helper.make_model(
        helper.make_graph(graph.nodes, "squeezenet", [images], [logits], graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="flax-squeezenet",
        doc_string="SqueezeNet; input NCHW float32 images, normalised as for the Flax model.",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def save_onnx(
    module: SqueezeNet,
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    preprocessing: Any = None,
    int8: bool = False,
    calibration: Any = None,
    input_shape: Sequence[int] | None = None,
    weight_rounding: str = "nearest",
    class_names: Sequence[str] | None = None,
) -> pathlib.Path:
    """Write the ONNX export of `module` with `variables` to `path` (whole or not at all, mode per umask).

    `preprocessing` (a `conventions.InputConvention`) is stored as the model property
    "preprocessing" (JSON: mean, std, resize_size, crop_size, channel_order) for deployments.
    `int8=True` writes the static int8 (QDQ) model (`flax_squeezenet.deploy.onnx_int8`), calibrated on
    `calibration`: a folder of images or a list of image files, prepared by `preprocessing`
    (default: ImageNet's for a 3-channel model; a 1-channel model needs its own), or an NHWC
    float32 array already prepared. `input_shape` (N, C, H, W) fixes the input shape; by default
    the batch and image size are free. `weight_rounding` "adaround" rounds the int8 weights up or
    down, layer after layer, to reproduce each layer's float output on the calibration images as
    the int8 model computes it (`int8_rounding`; slower to write; its accuracy against "nearest" is
    in BENCHMARKS.md). `class_names` (one per class) are stored as the model property "class_names"
    (JSON list; see the module docstring).
    """
    import onnx

    from flax_squeezenet.deploy import int8_rounding, onnx_int8

    if int8 != (calibration is not None):
        raise ValueError("int8=True and calibration go together (a folder, image files or prepared images)")
    if class_names is not None and len(class_names) != module.num_classes:
        raise ValueError(f"expected {module.num_classes} class names (one per class), got {len(class_names)}")
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"expected weight_rounding one of {', '.join(WEIGHT_ROUNDINGS)}, got {weight_rounding!r}")
    if int8:  # before calibration and AdaRound: a missing extra is said at once
        onnx_int8.require_onnxruntime()

    def export(weights: Mapping[str, Any]) -> Any:
        proto = to_onnx(module, weights)
        return proto if input_shape is None else onnx_int8.with_fixed_input_shape(proto, input_shape)

    files.check_output_is_not_input(path, *onnx_int8.calibration_files(calibration))
    model = export(variables)
    if int8:
        images = onnx_int8.calibration_images(calibration, module.in_channels, preprocessing, input_shape)
        if weight_rounding == "adaround":  # fitted to the float model's activation ranges: quantized with them
            rounded = export(int8_rounding.adaround_int8(module, variables, images))
            model = onnx_int8.quantize_int8(rounded, images, ranges_from=model)
        else:
            model = onnx_int8.quantize_int8(model, images)
    properties = {} if preprocessing is None else {"preprocessing": json.dumps(preprocessing.to_dict())}
    if class_names is not None:
        properties["class_names"] = json.dumps(list(class_names))
    onnx.helper.set_model_props(model, properties)
    with files.atomic_file(path) as temporary:
        onnx.save(model, temporary)
    return files.user_path(path)
