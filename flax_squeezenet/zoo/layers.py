"""The layer plan: a stage description as the ordered, named layers every part of the zoo walks.

`layer_plan(stages, in_channels, num_classes, bypass, classifier_padding)` is the one place that
names layers (`conv1`, `fire2` ... `fire9`, `pool1` ..., `classifier`), counts their channels,
decides where bypass shortcuts go and how each layer changes the spatial size; `forward` is the
one walk of it that computes a model's output (the linen and NNX modules give it their layers).
The ONNX writer, the weight converters, the Deep Compression reader and the benchmarks' torch
reference all iterate it, so a new layer option is added here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from flax_squeezenet.zoo.ops import pooled_size
from flax_squeezenet.zoo.stages import ConvStage, FireStage, PoolStage, Stage

Bypass = Literal["none", "simple", "complex"]
LayerKind = Literal["conv", "fire", "max_pool", "classifier"]
Shortcut = Literal["none", "identity", "projection"]
BYPASSES = ("none", "simple", "complex")
Output = Literal["logits", "pooled", "feature_map", "stages"]
OUTPUTS = ("logits", "pooled", "feature_map", "stages")


@dataclasses.dataclass(frozen=True)
class Convolution:
    """A convolution with bias: where its parameters live and its geometry (square kernels)."""

    path: tuple[str, ...]  # the parameter path, e.g. ("fire2", "squeeze")
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0  # zeros on every side

    @property
    def name(self) -> str:
        return "/".join(self.path)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The kernel's (out, in, kh, kw) shape, as PyTorch, Caffe, ncnn and ONNX store it."""
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of the plan.

    Attributes:
      name: `convN` or `fireN` (numbered from 1 in network order, as in the paper), `poolN` after
        the layer N it follows (as Caffe names them), or `classifier` (the paper's conv10).
      kind: "conv" (+ ReLU), "fire", "max_pool" (3x3/2, ceil mode) or "classifier" (1x1 conv +
        ReLU + global average pooling).
      in_channels, out_channels: channels of the layer's input and output.
      kernel, stride, padding: how the layer maps its input size to its output size (a Fire module
        keeps it: 3, 1, 1).
      convs: its parameterised convolutions in network order; a Fire module's are squeeze,
        expand1x1, expand3x3.
      shortcut: around a Fire module, "identity", "projection" (the 1x1 conv `shortcut_conv`) or
        "none".
    """

    name: str
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int = 0
    convs: tuple[Convolution, ...] = ()
    shortcut: Shortcut = "none"
    shortcut_conv: Convolution | None = None

    def output_size(self, size: int) -> int:
        """Height (or width) of the output for an input of `size` pixels; < 1 if too small."""
        if self.kind == "max_pool":
            return pooled_size(size)
        return (size + 2 * self.padding - self.kernel) // self.stride + 1


@dataclasses.dataclass(frozen=True)
class StageFeature:
    """One entry of the "stages" output: the layer it is taken after, its channels and stride."""

    layer: str
    channels: int
    stride: int


def fire_convolutions(name: str, stage: FireStage, in_channels: int) -> tuple[Convolution, Convolution, Convolution]:
    """The Fire module `name`'s squeeze, expand1x1 and expand3x3 convolutions."""
    return (
        Convolution((name, "squeeze"), in_channels, stage.squeeze, 1),
        Convolution((name, "expand1x1"), stage.squeeze, stage.expand1x1, 1),
        Convolution((name, "expand3x3"), stage.squeeze, stage.expand3x3, 3, padding=1),
    )


def _fire_layer(name: str, stage: FireStage, channels: int, bypass: Bypass) -> Layer:
    shortcut, shortcut_conv = "none", None
    if bypass != "none" and channels == stage.features:
        shortcut = "identity"
    elif bypass == "complex":
        shortcut, shortcut_conv = "projection", Convolution((f"{name}_bypass",), channels, stage.features, 1)
    convs = fire_convolutions(name, stage, channels)
    return Layer(name, "fire", channels, stage.features, 3, 1, 1, convs, shortcut, shortcut_conv)


def _check_options(in_channels: int, num_classes: int, bypass: str, classifier_padding: int) -> None:
    if bypass not in BYPASSES:
        raise ValueError(f"expected bypass 'none', 'simple' or 'complex', got {bypass!r}")
    for option, value, least in (("in_channels", in_channels, 1), ("num_classes", num_classes, 1),
                                 ("classifier_padding", classifier_padding, 0)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"expected an integer {option} >= {least}, got {value!r}")


def layer_plan(
    stages: Sequence[Stage],
    in_channels: int = 3,
    num_classes: int = 1000,
    bypass: Bypass = "none",
    classifier_padding: int = 0,
) -> tuple[Layer, ...]:
    """The network's layers in order, the classifier last.

    Args:
      stages: the stage description (e.g. `V1_0`, `V1_1`, `metaparameter_stages()`).
      in_channels: channels of the input images.
      num_classes: outputs of the classifier.
      bypass: "simple" puts identity shortcuts around Fire modules whose input and output channels
        match (the paper's fire3, 5, 7, 9); "complex" puts 1x1 conv shortcuts around the others too.
      classifier_padding: zero padding of the classifier's 1x1 conv (Caffe's conv10 has 1), so its
        ReLU(bias) border enters the global average.

    Raises:
      ValueError: an option is out of range or a stage is not a `ConvStage`, `FireStage` or
        `PoolStage` (the message names it).
    """
    _check_options(in_channels, num_classes, bypass, classifier_padding)
    layers, channels, number = [], in_channels, 0
    for stage in stages:
        if isinstance(stage, PoolStage):
            layers.append(Layer(f"pool{number}", "max_pool", channels, channels, 3, 2))
            continue
        number += 1
        if isinstance(stage, ConvStage):
            name = f"conv{number}"
            conv = Convolution((name,), channels, stage.features, stage.kernel, stage.stride)
            layers.append(Layer(name, "conv", channels, stage.features, stage.kernel, stage.stride, 0, (conv,)))
        elif isinstance(stage, FireStage):
            layers.append(_fire_layer(f"fire{number}", stage, channels, bypass))
        else:
            raise ValueError(f"expected ConvStage, FireStage or PoolStage stages, got {stage!r}")
        channels = layers[-1].out_channels
    head = Convolution(("classifier",), channels, num_classes, 1, padding=classifier_padding)
    layers.append(Layer("classifier", "classifier", channels, num_classes, 1, 1, classifier_padding, (head,)))
    return tuple(layers)


def convolutions(plan: Sequence[Layer]) -> Iterator[Convolution]:
    """Every convolution of the plan in network order: each layer's `convs`, then its shortcut's."""
    for layer in plan:
        yield from layer.convs
        if layer.shortcut_conv is not None:
            yield layer.shortcut_conv


def self_pooling_fires(plan: Sequence[Layer], kept: Collection[str] = ()) -> frozenset[str]:
    """The Fire layers that pool their own branches (`ops.max_pool_3x3_ceil_concat`), so the pool
    after them passes its input on: those followed by a pool, without a shortcut, and not in `kept`
    (layers whose unpooled output is returned)."""
    return frozenset(
        layer.name
        for layer, after in zip(plan, plan[1:])
        if layer.kind == "fire" and layer.shortcut == "none" and after.kind == "max_pool" and layer.name not in kept
    )


def stage_features(plan: Sequence[Layer]) -> dict[str, StageFeature]:
    """`{"stride2": ..., "stride4": ...}`: at each stride, the last conv or Fire layer's output."""
    features: dict[str, StageFeature] = {}
    stride = 1
    for layer in plan:
        if layer.kind == "classifier":
            break
        stride *= layer.stride
        if layer.kind != "max_pool":
            features[f"stride{stride}"] = StageFeature(layer.name, layer.out_channels, stride)
    return features


def forward(
    plan: Sequence[Layer],
    x: jax.Array,
    output: Output,
    apply_layer: Callable[[Layer, jax.Array, bool], jax.Array],
    classify: Callable[[jax.Array], jax.Array],
) -> jax.Array | dict[str, jax.Array]:
    """A SqueezeNet's `output` for `x`, its layers computed by `apply_layer(layer, x, pool_branches)`
    and `classify` (the classifier and its ReLU, before the global average): "logits" (N, classes)
    and "pooled" (N, C) in float32, "feature_map" (N, H, W, C), or "stages" (`stage_features`'
    keys). A Fire layer asked to pool its branches (`self_pooling_fires`) makes the pool after it
    pass its input on. The linen and NNX modules both run this walk."""
    if output not in OUTPUTS:
        raise ValueError(f"expected output {', '.join(map(repr, OUTPUTS))}, got {output!r}")
    *backbone, _ = plan
    wanted = stage_features(plan).items() if output == "stages" else ()
    keep = {feature.layer: key for key, feature in wanted}
    self_pooling = self_pooling_fires(plan, keep)
    features, previous = {}, None
    for layer in backbone:
        if not (layer.kind == "max_pool" and previous in self_pooling):
            x = apply_layer(layer, x, layer.name in self_pooling)
        if layer.name in keep:
            features[keep[layer.name]] = x
        previous = layer.name
    if output == "stages":
        return features
    if output == "feature_map":
        return x
    if output == "logits":
        x = classify(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def feature_info(stages: Sequence[Stage], in_channels: int = 3) -> dict[str, StageFeature]:
    """What `apply(..., output="stages")` returns, without running the model: for each key, the
    layer it is taken after, its channels and its stride (v1.0: conv1, fire4, fire8, fire9)."""
    return stage_features(layer_plan(stages, in_channels))


def _output_size(backbone: Sequence[Layer], size: int) -> int:
    for layer in backbone:
        if size < 1:
            return size
        size = layer.output_size(size)
    return size


def feature_map_size(stages: Sequence[Stage], size: int) -> int:
    """Spatial size of the last feature map (before the classifier) for an input of `size` pixels;
    < 1 if the input is too small."""
    return _output_size(layer_plan(stages)[:-1], size)


def min_input_size(stages: Sequence[Stage]) -> int:
    """The smallest input height or width the net accepts (torchvision: 21 for v1.0, 17 for v1.1)."""
    backbone, size = layer_plan(stages)[:-1], 1
    while _output_size(backbone, size) < 1:
        size += 1
    return size
