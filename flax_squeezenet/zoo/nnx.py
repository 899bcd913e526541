"""SqueezeNet as native Flax NNX modules, NHWC, from the same stage description as the linen ones.

`SqueezeNet(stages, num_classes, ..., rngs=nnx.Rngs(0))` holds its parameters as attributes named
as in the linen module (`conv1`, `fire2.squeeze`, ..., `fire3_bypass`, `classifier`), kernels in
the same HWIO layout, so `to_nnx` and `to_linen` are a plain copy of the parameter tree. Dropout
follows NNX's convention: active after `model.train()`, off after `model.eval()`.

Users import them from `flax_squeezenet.nnx`, which adds `load_pretrained`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flax_squeezenet.zoo import layers, models
from flax_squeezenet.zoo.layers import Bypass, Convolution, Layer, Output, StageFeature
from flax_squeezenet.zoo.models import Dtype, kaiming_uniform
from flax_squeezenet.zoo.ops import conv_1x1_as_matmul, max_pool_3x3_ceil, max_pool_3x3_ceil_concat
from flax_squeezenet.zoo.sizes import check_shapes
from flax_squeezenet.zoo.stages import V1_0, V1_1, FireStage, Stage

CONFIG_FIELDS = ("stages", "num_classes", "dropout_rate", "in_channels", "bypass", "classifier_padding", "dtype",
                 "param_dtype")  # fmt: skip


def conv_module(conv: Convolution, **options: Any) -> nnx.Conv:
    """The `nnx.Conv` of a plan convolution; 1x1 stride-1 convolutions are computed as matrix
    products (`ops.conv_1x1_as_matmul`, same parameters), as in the linen module."""
    fast = {"conv_general_dilated": conv_1x1_as_matmul} if (conv.kernel, conv.stride) == (1, 1) else {}
    return nnx.Conv(conv.in_channels, conv.out_channels, (conv.kernel,) * 2, (conv.stride,) * 2,
                    padding=((conv.padding,) * 2,) * 2, **fast, **options)  # fmt: skip


class FireModule(nnx.Module):
    """1x1 squeeze conv + ReLU, then 1x1 and 3x3 expand convs + ReLU, concatenated on channels."""

    def __init__(
        self,
        in_features: int,
        squeeze: int,
        expand1x1: int,
        expand3x3: int,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        kernel_init: Any = kaiming_uniform,
        rngs: nnx.Rngs,
    ):
        options = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init, rngs=rngs)
        convs = layers.fire_convolutions("fire", FireStage(squeeze, expand1x1, expand3x3), in_features)
        self.squeeze, self.expand1x1, self.expand3x3 = (conv_module(conv, **options) for conv in convs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate(self.branches(x), axis=-1)

    def branches(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The 1x1 and the 3x3 expand branches (after ReLU) that the module concatenates."""
        x = nnx.relu(self.squeeze(x))
        return nnx.relu(self.expand1x1(x)), nnx.relu(self.expand3x3(x))


def apply_layer(layer: Layer, modules: Sequence[nnx.Module], x: jax.Array, pool_branches: bool = False) -> jax.Array:
    """The output of a plan layer other than the classifier, given its modules (`layer_modules`).

    With `pool_branches`, a Fire layer without shortcut returns its output max-pooled (the pool
    after it then passes its input on: `layers.self_pooling_fires`).
    """
    if layer.kind == "max_pool":
        return max_pool_3x3_ceil(x)
    if layer.kind == "conv":
        return nnx.relu(modules[0](x))
    fire = modules[0]
    if layer.shortcut == "identity":
        return fire(x) + x
    if layer.shortcut == "projection":
        return fire(x) + modules[1](x)
    return max_pool_3x3_ceil_concat(fire.branches(x)) if pool_branches else fire(x)


class SqueezeNet(nnx.Module):
    """SqueezeNet over a stage description, with the linen `SqueezeNet`'s options and names.

    `num_classes`, `dropout_rate`, `in_channels`, `bypass`, `classifier_padding`, `dtype` and
    `param_dtype` are the linen module's options.

    Args:
      stages: the layers before the classifier (`V1_0`, `V1_1`, `models.metaparameter_stages(...)`).
      rngs: initialises the parameters and drives dropout (stream "dropout", else "default").

    Raises:
      ValueError: an option is out of range (as `layers.layer_plan` says).
    """

    def __init__(
        self,
        stages: Sequence[Stage] = V1_1,
        num_classes: int = 1000,
        dropout_rate: float = 0.5,
        in_channels: int = 3,
        bypass: Bypass = "none",
        classifier_padding: int = 0,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        plan = layers.layer_plan(stages, in_channels, num_classes, bypass, classifier_padding)
        self.stages, self.num_classes, self.dropout_rate = tuple(stages), num_classes, dropout_rate
        self.in_channels, self.bypass, self.classifier_padding = in_channels, bypass, classifier_padding
        self.dtype, self.param_dtype = dtype, param_dtype
        options = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        *backbone, classifier = plan
        for layer in backbone:
            if layer.kind == "conv":
                setattr(self, layer.name, conv_module(layer.convs[0], kernel_init=kaiming_uniform, **options))
            elif layer.kind == "fire":
                filters = (conv.out_channels for conv in layer.convs)
                setattr(self, layer.name, FireModule(layer.in_channels, *filters, **options))
            if layer.shortcut_conv is not None:
                shortcut = conv_module(layer.shortcut_conv, kernel_init=kaiming_uniform, **options)
                setattr(self, layer.shortcut_conv.path[-1], shortcut)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.classifier = conv_module(classifier.convs[0], kernel_init=jax.nn.initializers.normal(0.01), **options)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments but `rngs`: `SqueezeNet(**model.config, rngs=...)` rebuilds it."""
        return {name: getattr(self, name) for name in CONFIG_FIELDS}

    @property
    def plan(self) -> tuple[Layer, ...]:
        """The layers this module computes, in order (see `flax_squeezenet.zoo.layers.layer_plan`)."""
        return layers.layer_plan(self.stages, self.in_channels, self.num_classes, self.bypass, self.classifier_padding)

    @property
    def feature_info(self) -> dict[str, StageFeature]:
        """For each key of `model(x, output="stages")`: its layer, channels and stride."""
        return layers.feature_info(self.stages, self.in_channels)

    def layer_modules(self, layer: Layer) -> tuple[nnx.Module, ...]:
        """The submodules holding `layer`'s parameters: its conv or Fire module, then its shortcut
        conv if it has one; none for a pool."""
        names = [conv.path[0] for conv in layer.convs[:1]]
        if layer.shortcut_conv is not None:
            names.append(layer.shortcut_conv.path[-1])
        return tuple(getattr(self, name) for name in names)

    def linen_module(self) -> models.SqueezeNet:
        """The linen module computing what this one computes, for the same parameter tree."""
        return models.SqueezeNet(**self.config)

    def __call__(self, x: jax.Array, *, output: Output = "logits") -> jax.Array | dict[str, jax.Array]:
        """Class logits (N, num_classes) float32, or with `output` the features for a new head, as
        the linen module's: "pooled" (N, C) float32, "feature_map" (N, H, W, C), or "stages":
        `{"stride2": ..., ...}`, at each stride the last conv or Fire module's output before the
        pool that halves it (`feature_info` lists them), NHWC in `dtype`."""
        self.linen_module()._check_input(x)
        return layers.forward(
            self.plan, jnp.asarray(x, self.dtype), output,
            lambda layer, x, pool_branches: apply_layer(layer, self.layer_modules(layer), x, pool_branches),
            lambda x: nnx.relu(self.classifier(self.dropout(x))),
        )  # fmt: skip


squeezenet1_0 = functools.partial(SqueezeNet, V1_0)
squeezenet1_1 = functools.partial(SqueezeNet, V1_1)
squeezenet1_0_simple_bypass = functools.partial(SqueezeNet, V1_0, bypass="simple")
squeezenet1_0_complex_bypass = functools.partial(SqueezeNet, V1_0, bypass="complex")


def to_nnx(module: models.SqueezeNet, variables: Any, *, rngs: nnx.Rngs | None = None) -> SqueezeNet:
    """The NNX module with `module`'s options and the parameters of its linen `variables`.

    `rngs` drives its dropout (default `nnx.Rngs(0)`); like every new NNX module it starts in
    train mode (`model.eval()` turns dropout off). Only shapes are traced: nothing is initialised.
    Raises ValueError naming the first parameter missing, extra or misshapen.
    """
    config = {name: getattr(module, name) for name in CONFIG_FIELDS}
    rngs = nnx.Rngs(0) if rngs is None else rngs
    model = nnx.eval_shape(lambda: SqueezeNet(**config, rngs=nnx.Rngs(0)))
    expected = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    check_shapes(expected, variables["params"], type(module).__name__)
    params = nnx.state(model, nnx.Param)
    cast = jax.tree_util.tree_map(lambda leaf, spec: jnp.asarray(leaf, spec.dtype), variables["params"], expected)
    nnx.replace_by_pure_dict(params, cast)
    nnx.update(model, params)
    model.dropout = nnx.Dropout(module.dropout_rate, rngs=rngs)
    return model


def to_linen(model: SqueezeNet) -> tuple[models.SqueezeNet, dict[str, Any]]:
    """The linen module and its variables ({"params": ...}) computing what `model` computes."""
    return model.linen_module(), {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
