"""SqueezeNet (Iandola et al., 2016) as Flax linen modules, NHWC.

Every variant is one `SqueezeNet` module over a stage description (`flax_squeezenet.zoo.stages`),
walked as its layer plan (`flax_squeezenet.zoo.layers.layer_plan`), so torchvision's v1.0 and v1.1,
the paper's bypass variants and its metaparameter family all share one code path. Parameter names
follow the paper: `conv1`, `fire2` ... `fire9`, `classifier` (the paper's conv10).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from flax_squeezenet.zoo import layers, ops
from flax_squeezenet.zoo.layers import Bypass, Convolution, Layer, Output, StageFeature
from flax_squeezenet.zoo.stages import V1_0, V1_1, FireStage, Stage, metaparameter_stages

Dtype = Any

kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")


def conv_module(conv: Convolution, **options: Any) -> nn.Conv:
    """The `nn.Conv` of a plan convolution, named after the last part of its path; 1x1 stride-1
    convolutions are computed as matrix products (`ops.conv_1x1_as_matmul`, same parameters)."""
    fast = {"conv_general_dilated": ops.conv_1x1_as_matmul} if (conv.kernel, conv.stride) == (1, 1) else {}
    return nn.Conv(conv.out_channels, (conv.kernel,) * 2, (conv.stride,) * 2,
                   padding=((conv.padding,) * 2,) * 2, name=conv.path[-1], **fast, **options)  # fmt: skip


class FireModule(nn.Module):
    """1x1 squeeze conv + ReLU, then 1x1 and 3x3 expand convs + ReLU, concatenated on channels."""

    squeeze: int
    expand1x1: int
    expand3x3: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = kaiming_uniform

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return jnp.concatenate(self.branches(x), axis=-1)

    @nn.compact
    def branches(self, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """The 1x1 and the 3x3 expand branches (after ReLU) that the module concatenates."""
        options = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        stage = FireStage(self.squeeze, self.expand1x1, self.expand3x3)
        squeeze, expand1x1, expand3x3 = layers.fire_convolutions(self.name or "fire", stage, x.shape[-1])
        x = nn.relu(conv_module(squeeze, **options)(x))
        return nn.relu(conv_module(expand1x1, **options)(x)), nn.relu(conv_module(expand3x3, **options)(x))


class SqueezeNet(nn.Module):
    """SqueezeNet over a stage description; call as `apply(variables, images, train=...)`.

    Attributes:
      stages: the layers before the classifier (see `V1_0`, `V1_1`, `metaparameter_stages`).
      num_classes: outputs of the final 1x1 conv.
      dropout_rate: dropout before the classifier, active when `train=True`.
      in_channels: channels the input images must have.
      bypass: "simple" adds identity shortcuts around Fire modules whose input and output
        channels match (the paper's fire3, 5, 7, 9); "complex" adds 1x1 conv shortcuts around
        the others too.
      classifier_padding: zero padding of the classifier conv; 1 is Caffe's conv10 (the paper's
        own model), whose ReLU(bias) border then enters the global average. torchvision: 0.
      dtype: computation dtype (e.g. jnp.bfloat16); logits and pooled features are float32.
      param_dtype: dtype of the parameters.
    """

    stages: Sequence[Stage] = V1_1
    num_classes: int = 1000
    dropout_rate: float = 0.5
    in_channels: int = 3
    bypass: Bypass = "none"
    classifier_padding: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def plan(self) -> tuple[Layer, ...]:
        """The layers this module computes, in order (see `flax_squeezenet.zoo.layers.layer_plan`)."""
        return layers.layer_plan(self.stages, self.in_channels, self.num_classes, self.bypass, self.classifier_padding)

    @property
    def feature_info(self) -> dict[str, StageFeature]:
        """For each key of `apply(..., output="stages")`: its layer, channels and stride."""
        return layers.feature_info(self.stages, self.in_channels)

    @property
    def min_input_size(self) -> int:
        return layers.min_input_size(self.stages)

    def _check_input(self, x: jnp.ndarray) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"expected images of shape (batch, height, width, {self.in_channels}), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} channels in the last axis (NHWC), "
                f"got shape {tuple(x.shape)}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"expected floating-point images (normalised, see flax_squeezenet.preprocess), "
                f"got dtype {x.dtype}"
            )
        if min(x.shape[1:3]) < self.min_input_size:
            raise ValueError(
                f"expected height and width of at least {self.min_input_size} pixels, "
                f"got {x.shape[1]}x{x.shape[2]}"
            )

    def _layer(self, layer: Layer, x: jnp.ndarray, pool_branches: bool) -> jnp.ndarray:
        """A plan layer's output (`layers.forward`'s `apply_layer`)."""
        options = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if layer.kind == "conv":
            return nn.relu(conv_module(layer.convs[0], kernel_init=kaiming_uniform, **options)(x))
        if layer.kind == "max_pool":
            return ops.max_pool_3x3_ceil(x)
        fire = FireModule(*(conv.out_channels for conv in layer.convs), **options, name=layer.name)
        if layer.shortcut == "identity":
            return fire(x) + x
        if layer.shortcut == "projection":
            return fire(x) + conv_module(layer.shortcut_conv, kernel_init=kaiming_uniform, **options)(x)
        return ops.max_pool_3x3_ceil_concat(fire.branches(x)) if pool_branches else fire(x)

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, train: bool = False, output: Output = "logits"
    ) -> jnp.ndarray | dict[str, jnp.ndarray]:
        """Class logits (N, num_classes) float32, or with `output` the features for a new head:
        "pooled" (N, C) float32 global average of the last Fire module, "feature_map" (N, H, W, C),
        or "stages": `{"stride2": ..., "stride4": ..., ...}`, at each stride the last conv or Fire
        module's output before the pool that halves it (`feature_info` lists them), NHWC in
        `dtype`."""
        plan = self.plan
        self._check_input(x)
        classifier = conv_module(plan[-1].convs[0], kernel_init=nn.initializers.normal(0.01),
                                 dtype=self.dtype, param_dtype=self.param_dtype)  # fmt: skip
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        return layers.forward(plan, jnp.asarray(x, self.dtype), output, self._layer,
                              lambda x: nn.relu(classifier(dropout(x))))  # fmt: skip


squeezenet1_0 = functools.partial(SqueezeNet, stages=V1_0)
squeezenet1_1 = functools.partial(SqueezeNet, stages=V1_1)
squeezenet1_0_simple_bypass = functools.partial(SqueezeNet, stages=V1_0, bypass="simple")
squeezenet1_0_complex_bypass = functools.partial(SqueezeNet, stages=V1_0, bypass="complex")


def squeezenet_metaparameters(
    base_e: int = 128,
    incr_e: int = 128,
    pct3x3: float = 0.5,
    freq: int = 2,
    sr: float = 0.125,
    **kwargs: Any,
) -> SqueezeNet:
    """A SqueezeNet from the paper's metaparameters (Section 5); the defaults give v1.0."""
    return SqueezeNet(stages=metaparameter_stages(base_e, incr_e, pct3x3, freq, sr), **kwargs)


MODELS: dict[str, Callable[..., SqueezeNet]] = {
    "squeezenet1_0": squeezenet1_0,
    "squeezenet1_1": squeezenet1_1,
    "squeezenet1_0_simple_bypass": squeezenet1_0_simple_bypass,
    "squeezenet1_0_complex_bypass": squeezenet1_0_complex_bypass,
    "squeezenet_metaparameters": squeezenet_metaparameters,
}


def create_model(name: str, **kwargs: Any) -> SqueezeNet:
    """The variant `name` (a key of `MODELS`) built with `kwargs` (num_classes, dtype, ...)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


def count_params(variables: Any) -> int:
    """The number of scalar parameters in a variables or params tree."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables))


_NAME_ORDER = {"conv1": 0, "squeeze": 0, "expand1x1": 1, "expand3x3": 2, "kernel": 0, "bias": 1, "classifier": 1000}


def _network_order(path: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Sort key putting parameter paths in the order the network uses them (fire10 after fire9)."""

    def rank(name: str) -> tuple[int, int]:
        fire = re.fullmatch(r"fire(\d+)(_bypass)?", name)
        if fire:
            return int(fire[1]), 1 if fire[2] else 0
        return _NAME_ORDER.get(name, 2000), 0

    return tuple(rank(name) for name in path)


def check_param_shapes(expected: Any, loaded: Any, model_name: str) -> None:
    """Raise ValueError naming the first parameter (in network order) that is missing or misfits."""
    expected_flat = flax.traverse_util.flatten_dict(expected)
    loaded_flat = flax.traverse_util.flatten_dict(loaded)
    for path in sorted(expected_flat.keys() | loaded_flat.keys(), key=_network_order):
        name = "/".join(path)
        if path not in loaded_flat:
            raise ValueError(f"parameter {name} is missing from the checkpoint ({model_name} has it)")
        if path not in expected_flat:
            raise ValueError(f"parameter {name} is in the checkpoint but not in {model_name}")
        if tuple(loaded_flat[path].shape) != tuple(expected_flat[path].shape):
            raise ValueError(
                f"parameter {name} has shape {tuple(loaded_flat[path].shape)} in the checkpoint, "
                f"but {model_name} expects {tuple(expected_flat[path].shape)}"
            )
