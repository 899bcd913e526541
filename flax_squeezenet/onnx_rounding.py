"""The float32 ONNX export with every convolution's weights already on their int8 grid (AdaRound).

`round_conv_weights` takes the moments of each Conv's input patches, measured in onnxruntime on
calibration images (`conv_input_moments`), and replaces its weights and bias
by `rounding.adaround`'s. `onnxruntime.quantization.quantize_static` then turns those weights into
exactly the chosen integers. Needs `onnx` and `onnxruntime` (the `export` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flax_squeezenet.rounding import InputMoments, adaround

POSITIONS_PER_IMAGE = 256  # random output positions sampled per calibration image and convolution


def _conv_geometry(node: Any) -> tuple[int, int, int]:
    import onnx.helper

    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return attributes["kernel_shape"][0], attributes["strides"][0], attributes["pads"][0]


def _patch_rows(inputs: np.ndarray, node: Any, positions: tuple[np.ndarray, ...]) -> np.ndarray:
    """The (C, kh, kw)-flattened input patches of Conv `node` at output `positions` (image, y, x)."""
    kernel, stride, pad = _conv_geometry(node)
    padded = np.pad(inputs, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    image, y, x = (p[:, None, None, None] for p in positions)
    dy, dx = np.meshgrid(np.arange(kernel), np.arange(kernel), indexing="ij")
    channels = np.arange(inputs.shape[1])[None, :, None, None]
    patches = padded[image, channels, y * stride + dy[None, None], x * stride + dx[None, None]]
    return patches.reshape(len(positions[0]), -1)


def _conv_inputs_session(proto: Any, names: list[str]) -> Any:
    """An onnxruntime session of `proto` that also outputs the tensors `names`."""
    import onnx
    import onnxruntime

    probed = onnx.ModelProto()
    probed.CopyFrom(proto)
    for name in sorted(set(names) - {i.name for i in proto.graph.input}):
        probed.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return onnxruntime.InferenceSession(probed.SerializeToString(), providers=["CPUExecutionProvider"])


def conv_input_moments(proto: Any, images_nchw: np.ndarray, batch_size: int) -> dict[str, InputMoments]:
    """Per Conv node name, the moments of its input patches on `images_nchw` at random positions.

    The model runs in batches of `batch_size` (a fixed-batch model's own size).
    """
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    session = _conv_inputs_session(proto, [conv.input[0] for conv in convs])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    rows: dict[str, list[np.ndarray]] = {conv.name: [] for conv in convs}
    for start in range(0, len(images_nchw), batch_size):
        batch = np.ascontiguousarray(images_nchw[start : start + batch_size])
        tensors = {input_name: batch, **dict(zip(names, session.run(None, {input_name: batch})))}
        for conv in convs:
            inputs = tensors[conv.input[0]]
            kernel, stride, pad = _conv_geometry(conv)
            height, width = ((size + 2 * pad - kernel) // stride + 1 for size in inputs.shape[2:])
            count = POSITIONS_PER_IMAGE * len(inputs)
            positions = tuple(rng.integers(0, limit, count) for limit in (len(inputs), height, width))
            rows[conv.name].append(_patch_rows(inputs, conv, positions))
    return {name: InputMoments.from_rows(np.concatenate(parts)) for name, parts in rows.items()}


def round_conv_weights(float_proto: Any, moments: dict[str, InputMoments]) -> Any:
    """A copy of `float_proto` whose Conv weights and biases are `rounding.adaround`'s for `moments`."""
    import onnx
    import onnx.numpy_helper

    rounded = onnx.ModelProto()
    rounded.CopyFrom(float_proto)
    initializers = {t.name: t for t in rounded.graph.initializer}
    for node in (n for n in rounded.graph.node if n.op_type == "Conv"):
        kernel_tensor, bias_tensor = initializers[node.input[1]], initializers[node.input[2]]
        kernel = onnx.numpy_helper.to_array(kernel_tensor)
        weights, bias = adaround(
            kernel.reshape(len(kernel), -1), onnx.numpy_helper.to_array(bias_tensor), moments[node.name]
        )
        kernel_tensor.CopyFrom(onnx.numpy_helper.from_array(weights.reshape(kernel.shape), kernel_tensor.name))
        bias_tensor.CopyFrom(onnx.numpy_helper.from_array(bias, bias_tensor.name))
    return rounded
