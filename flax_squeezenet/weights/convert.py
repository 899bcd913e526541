"""Weights from other frameworks, renamed and transposed into this package's parameter tree.

torchvision names its layers by position in `features` (a `Sequential` of conv, ReLU, pools and
Fire modules) and stores conv kernels as (out, in, kh, kw); Flax names them `conv1`, `fire2` ...
`fire9`, `classifier` and stores kernels as (kh, kw, in, out). The rules below say, for each
torchvision name, which Flax parameter it becomes and how its layout changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flax_squeezenet.zoo.layers import convolutions, layer_plan
from flax_squeezenet.zoo.stages import V1_0, V1_1, Stage

Params = dict[str, dict]


def oihw_to_hwio(kernel: np.ndarray) -> np.ndarray:
    """A PyTorch/Caffe/ncnn conv kernel (out, in, kh, kw) as a Flax kernel (kh, kw, in, out)."""
    if kernel.ndim != 4:
        raise ValueError(f"expected a conv kernel of rank 4 (out, in, kh, kw), got shape {kernel.shape}")
    return np.transpose(kernel, (2, 3, 1, 0))


def as_is(array: np.ndarray) -> np.ndarray:
    return array


# (torchvision name pattern, Flax path template, layout change). `{layer}` is the Flax name of the
# `features` entry at `index` (see `torchvision_feature_names`).
TORCHVISION_RULES: tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...] = (
    (r"features\.(?P<index>\d+)\.weight", "{layer}/kernel", oihw_to_hwio),
    (r"features\.(?P<index>\d+)\.bias", "{layer}/bias", as_is),
    (r"features\.(?P<index>\d+)\.(?P<conv>squeeze|expand1x1|expand3x3)\.weight", "{layer}/{conv}/kernel", oihw_to_hwio),
    (r"features\.(?P<index>\d+)\.(?P<conv>squeeze|expand1x1|expand3x3)\.bias", "{layer}/{conv}/bias", as_is),
    (r"classifier\.1\.weight", "classifier/kernel", oihw_to_hwio),
    (r"classifier\.1\.bias", "classifier/bias", as_is),
)  # fmt: skip

# torchvision's two architectures, told apart by their first conv's kernel size (7 vs 3).
TORCHVISION_MODELS: dict[int, tuple[str, Sequence[Stage]]] = {
    7: ("squeezenet1_0", V1_0),
    3: ("squeezenet1_1", V1_1),
}


def torchvision_feature_names(stages: Sequence[Stage]) -> dict[int, str]:
    """The Flax name of each conv or Fire entry of torchvision's `features`, by index.

    torchvision follows the stem conv by its own ReLU entry, so it takes two indices; a pool or
    Fire module takes one. For v1.0 this gives {0: "conv1", 3: "fire2", ..., 12: "fire9"}.
    """
    names: dict[int, str] = {}
    index = 0
    for layer in layer_plan(stages)[:-1]:
        if layer.kind != "max_pool":
            names[index] = layer.name
        index += 2 if layer.kind == "conv" else 1
    return names


def torchvision_model(conv1_kernel_shape: Sequence[int]) -> tuple[str, Sequence[Stage]]:
    """The torchvision architecture (name, stages) whose first conv has this (out, in, kh, kw) shape."""
    kernel_size = conv1_kernel_shape[-1] if len(conv1_kernel_shape) == 4 else None
    if kernel_size not in TORCHVISION_MODELS:
        raise ValueError(
            f"cannot tell the SqueezeNet version from its first conv of shape {tuple(conv1_kernel_shape)}: "
            "expected a 7x7 kernel (squeezenet1_0) or a 3x3 kernel (squeezenet1_1); pass model=..."
        )
    return TORCHVISION_MODELS[kernel_size]


def _set(tree: Params, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def from_torchvision(state_dict: Mapping[str, np.ndarray]) -> tuple[str, Params]:
    """A torchvision SqueezeNet state dict as (architecture name, Flax params)."""
    if "features.0.weight" not in state_dict:
        raise ValueError(
            "not a torchvision SqueezeNet state dict: expected a 'features.0.weight' entry, got "
            f"{', '.join(list(state_dict)[:5]) or 'no entries'}"
        )
    name, stages = torchvision_model(state_dict["features.0.weight"].shape)
    layers = torchvision_feature_names(stages)
    params: Params = {}
    for key, value in state_dict.items():
        for pattern, template, layout in TORCHVISION_RULES:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            fields = match.groupdict()
            if "index" in fields:
                index = int(fields["index"])
                if index not in layers:
                    raise ValueError(f"{key}: {name} has no conv or Fire module at features[{index}]")
                fields["layer"] = layers[index]
            _set(params, template.format(**fields), layout(np.asarray(value)))
            break
        else:
            raise ValueError(f"unexpected entry {key!r} in a torchvision SqueezeNet state dict")
    return name, params


def from_conv_sequence(convs: Sequence[tuple[np.ndarray, np.ndarray]], stages: Sequence[Stage]) -> Params:
    """Flax params from (kernel (out, in, kh, kw), bias) pairs in network order.

    The order is conv1, then squeeze, expand1x1, expand3x3 of each Fire module, then the
    classifier: the order ncnn and Caffe exports list their convolutions in.
    """
    plan = layer_plan(stages)
    names = [conv.name for conv in convolutions(plan)]
    if len(convs) != len(names):
        fires = sum(layer.kind == "fire" for layer in plan)
        raise ValueError(f"expected {len(names)} convolutions ({fires} Fire modules), got {len(convs)}")
    params: Params = {}
    for name, (kernel, bias) in zip(names, convs):
        _set(params, f"{name}/kernel", oihw_to_hwio(np.asarray(kernel)))
        _set(params, f"{name}/bias", np.asarray(bias))
    return params
