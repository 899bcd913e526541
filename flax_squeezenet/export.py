"""Export a SqueezeNet to ONNX, written directly from its stage description and parameters.

The graph is the one `SqueezeNet.__call__` computes for inference, in ONNX's NCHW layout: Conv,
Relu, MaxPool (3x3/2, ceil_mode=1), Concat, Add (bypass), GlobalAveragePool and Flatten, with a
dynamic batch dimension. Input "images" (batch, channels, height, width) float32, normalised as
for the Flax model; output "logits" (batch, num_classes) float32. Needs the `onnx` package
(the `export` extra); the rest of the library does not.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from flax_squeezenet import files
from flax_squeezenet.models import Conv, MaxPool, SqueezeNet

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

    def conv(self, x: str, path: tuple[str, ...], *, stride: int = 1, pad: int = 0) -> str:
        """Conv + bias from the Flax parameters at `path` (kernel HWIO -> ONNX OIHW)."""
        leaf: Any = self.params
        for key in path:
            if key not in leaf:
                raise ValueError(f"expected a parameter {'/'.join(path)} for this model; it is missing")
            leaf = leaf[key]
        kernel = np.asarray(leaf["kernel"], np.float32).transpose(3, 2, 0, 1)
        name = "/".join(path)
        for suffix, array in (("kernel", kernel), ("bias", np.asarray(leaf["bias"], np.float32))):
            self.initializers.append(
                self._numpy_helper.from_array(np.ascontiguousarray(array), f"{name}/{suffix}")
            )
        return self.node(
            "Conv", [x, f"{name}/kernel", f"{name}/bias"], f"{name}/conv",
            kernel_shape=list(kernel.shape[2:]), strides=[stride, stride], pads=[pad] * 4,
        )  # fmt: skip

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], f"{x}/relu")


def to_onnx(module: SqueezeNet, variables: Mapping[str, Any]) -> Any:
    """The `onnx.ModelProto` computing `module.apply(variables, images)` (eval mode) on NCHW input.

    Raises:
      ValueError: `variables` lack a parameter the module needs (the first one is named).
    """
    import onnx
    import onnx.helper

    params = variables.get("params", variables)
    graph = _GraphBuilder(params)
    x, channels = "images", module.in_channels
    fire_index = 2
    for stage in module.stages:
        if isinstance(stage, Conv):
            x = graph.relu(graph.conv(x, ("conv1",), stride=stage.stride))
            channels = stage.features
        elif isinstance(stage, MaxPool):
            x = graph.node("MaxPool", [x], f"{x}/maxpool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
        else:
            name = f"fire{fire_index}"
            squeezed = graph.relu(graph.conv(x, (name, "squeeze")))
            expanded = [
                graph.relu(graph.conv(squeezed, (name, "expand1x1"))),
                graph.relu(graph.conv(squeezed, (name, "expand3x3"), pad=1)),
            ]
            y = graph.node("Concat", expanded, f"{name}/concat", axis=1)
            if module.bypass != "none" and stage.features == channels:
                y = graph.node("Add", [y, x], f"{name}/bypass")
            elif module.bypass == "complex":
                y = graph.node("Add", [y, graph.conv(x, (f"{name}_bypass",))], f"{name}/bypass")
            x, channels = y, stage.features
            fire_index += 1
    x = graph.relu(graph.conv(x, ("classifier",)))
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
    module: SqueezeNet, variables: Mapping[str, Any], path: str | os.PathLike, *, preprocessing: Any = None
) -> pathlib.Path:
    """Write the ONNX export of `module` with `variables` to `path` (whole or not at all, mode per umask).

    `preprocessing` (a `conventions.InputConvention`) is stored as the model property
    "preprocessing" (JSON: mean, std, resize_size, crop_size, channel_order) for deployments.
    """
    import onnx

    model = to_onnx(module, variables)
    if preprocessing is not None:
        onnx.helper.set_model_props(model, {"preprocessing": json.dumps(preprocessing.to_dict())})
    with files.atomic_file(path) as temporary:
        onnx.save(model, temporary)
    return files.user_path(path)
