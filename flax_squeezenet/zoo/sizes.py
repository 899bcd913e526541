"""The sizes a weights file may declare: the parameter shapes of the model it names.

Every reader (`.sqz`, `.net`, safetensors, `.pth`, ncnn) checks the shapes and counts its file
declares against `model_shapes` of the model the file names before it allocates or decodes
anything by them, so a hostile header costs at most the memory of that model, and a model of more
than `MAX_PARAMETERS` parameters is refused (tests/test_hostile_files.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.traverse_util
import jax.numpy as jnp
import numpy as np

from flax_squeezenet.zoo.layers import convolutions
from flax_squeezenet.zoo.models import create_model

# About 200 times SqueezeNet v1.0 with 1,000 classes (1.25 M): more than any SqueezeNet this
# project builds, and 1 GiB as float32.
MAX_PARAMETERS = 1 << 28

Shapes = dict[str, tuple[int, ...]]

_NAME_ORDER = {"conv1": 0, "squeeze": 0, "expand1x1": 1, "expand3x3": 2, "kernel": 0, "bias": 1, "classifier": 1000}


def model_shapes(model: str, model_kwargs: Mapping[str, Any], source: str) -> Shapes:
    """Every parameter's shape ("fire2/squeeze/kernel": (kh, kw, in, out) as Flax stores it) of the
    variant `model` built with `model_kwargs`, from its layer plan (nothing is allocated).

    Raises ValueError naming `source` if no such model can be built (unknown variant or option, an
    option of the wrong type) or it has more than `MAX_PARAMETERS` parameters.
    """
    try:
        plan = create_model(model, **model_kwargs).plan
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source} names a model that cannot be built "
                         f"({model!r} with {dict(model_kwargs)}): {error}") from None  # fmt: skip
    shapes: Shapes = {}
    for conv in convolutions(plan):
        shapes[f"{conv.name}/kernel"] = (conv.kernel, conv.kernel, conv.in_channels, conv.out_channels)
        shapes[f"{conv.name}/bias"] = (conv.out_channels,)
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > MAX_PARAMETERS:
        raise ValueError(f"{source} names a {model} of {count:,} parameters; at most {MAX_PARAMETERS:,} are read")
    return shapes


def network_order(path: str) -> tuple[tuple[int, int], ...]:
    """Sort key putting parameter paths ("fire10/squeeze/kernel") in the order the network uses them."""

    def rank(name: str) -> tuple[int, int]:
        fire = re.fullmatch(r"fire(\d+)(_bypass)?", name)
        if fire:
            return int(fire[1]), 1 if fire[2] else 0
        return _NAME_ORDER.get(name, 2000), 0

    return tuple(rank(name) for name in path.split("/"))


def check_declared(declared: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], source: str,
                   model: str) -> None:  # fmt: skip
    """Raise ValueError naming `source` and the first parameter (in network order) that `declared`
    lacks, has but `model` does not, or declares with another shape than `expected`."""
    for path in sorted(expected.keys() | declared.keys(), key=network_order):
        if path not in declared:
            raise ValueError(f"{source}: parameter {path} is missing ({model} has it)")
        if path not in expected:
            raise ValueError(f"{source}: parameter {path} is in the file but not in {model}")
        if tuple(declared[path]) != tuple(expected[path]):
            raise ValueError(f"{source}: parameter {path} has shape {tuple(declared[path])}, "
                             f"but {model} expects {tuple(expected[path])}")  # fmt: skip


def check_shapes(expected: Any, loaded: Any, model_name: str, source: str = "the checkpoint") -> None:
    """Raise ValueError naming `source` and the first parameter (in network order) that is missing or misfits."""
    shapes = {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(expected, sep="/").items()}
    declared = {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(loaded, sep="/").items()}
    check_declared(declared, shapes, source, model_name)


def declared_sizes(params: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(in_channels, num_classes) that a params tree's (or shape-only views') conv1 and classifier
    kernels declare; None where it has no such kernel."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    conv1, classifier = flat.get("conv1/kernel"), flat.get("classifier/kernel")
    return (None if conv1 is None or conv1.ndim != 4 else int(conv1.shape[2]),
            None if classifier is None or classifier.ndim != 4 else int(classifier.shape[3]))  # fmt: skip


def check_params(params: Mapping[str, Any], model: str, model_kwargs: Mapping[str, Any], source: str,
                 described_as: str | None = None) -> None:  # fmt: skip
    """Raise ValueError naming `source` unless the params tree `params` (arrays, or `shape_only`
    views) is floating-point and has exactly the shapes of `model` built with `model_kwargs`
    (`described_as` in the message, default `model`); the model's in_channels and num_classes
    default to those its conv1 and classifier declare."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    for path, leaf in flat.items():
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ValueError(f"{source}: parameter {path} holds {leaf.dtype} values; expected floating-point weights")
    in_channels, num_classes = declared_sizes(params)
    stated = {key: value for key, value in (("in_channels", in_channels), ("num_classes", num_classes)) if value}
    expected = model_shapes(model, {**stated, **model_kwargs}, source)
    check_declared({path: leaf.shape for path, leaf in flat.items()}, expected, source, described_as or model)


def shape_only(shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """A read-only array of `shape` that takes no memory (every element is the same zero), to run
    layout conversions on declared shapes before any data is read; ValueError for an impossible shape."""
    return np.broadcast_to(np.zeros((), dtype), tuple(int(n) for n in shape))
