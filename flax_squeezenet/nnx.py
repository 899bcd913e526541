"""SqueezeNet as native Flax NNX modules, NHWC, from the same stage description as the linen ones.

`SqueezeNet(stages, num_classes, ..., rngs=nnx.Rngs(0))` holds its parameters as attributes named
as in the linen module (`conv1`, `fire2.squeeze`, ..., `fire3_bypass`, `classifier`), kernels in
the same HWIO layout, so `to_nnx` and `to_linen` are a plain copy of the parameter tree. Dropout
follows NNX's convention: active after `model.train()`, off after `model.eval()`.

    from flax import nnx
    import flax_squeezenet.nnx as fsq_nnx
    model = fsq_nnx.load_pretrained("squeezenet1_1")          # ready, in eval mode
    logits = nnx.jit(lambda m, x: m(x))(model, images)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from flax_squeezenet import models, pretrained
from flax_squeezenet.layers import Bypass
from flax_squeezenet.models import Dtype, kaiming_uniform
from flax_squeezenet.ops import conv_1x1_as_matmul, max_pool_3x3_ceil, max_pool_3x3_ceil_concat
from flax_squeezenet.stages import V1_0, V1_1, ConvStage as Conv, FireStage as Fire, PoolStage as MaxPool, Stage

from flax_squeezenet.pretrained import _check_shapes as check_shapes

Output = Literal["logits", "pooled", "feature_map", "stages"]
OUTPUTS = ("logits", "pooled", "feature_map", "stages")
CONFIG_FIELDS = ("stages", "num_classes", "dropout_rate", "in_channels", "bypass", "dtype", "param_dtype")


def _conv(
    in_features: int, out_features: int, kernel: int, stride: int = 1, *, padding: Any = "VALID", **options: Any
) -> nnx.Conv:
    """An nnx.Conv with a square kernel; a 1x1 stride-1 one is computed as a matrix product."""
    if kernel == 1 and stride == 1:
        options["conv_general_dilated"] = conv_1x1_as_matmul
    return nnx.Conv(in_features, out_features, (kernel, kernel), (stride, stride), padding=padding, **options)


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
        self.squeeze = _conv(in_features, squeeze, 1, **options)
        self.expand1x1 = _conv(squeeze, expand1x1, 1, **options)
        self.expand3x3 = _conv(squeeze, expand3x3, 3, padding=((1, 1), (1, 1)), **options)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate(self.branches(x), axis=-1)

    def branches(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The 1x1 and the 3x3 expand branches (after ReLU) that the module concatenates."""
        x = nnx.relu(self.squeeze(x))
        return nnx.relu(self.expand1x1(x)), nnx.relu(self.expand3x3(x))


def fire_names(stages: Sequence[Stage]) -> list[str]:
    """The attribute name of each Fire stage in order: fire2, fire3, ... (the paper's numbering)."""
    return [f"fire{index}" for index in range(2, 2 + sum(isinstance(stage, Fire) for stage in stages))]


class SqueezeNet(nnx.Module):
    """SqueezeNet over a stage description, with the linen `SqueezeNet`'s options and names.

    Args:
      stages: the layers before the classifier (`V1_0`, `V1_1`, `models.metaparameter_stages(...)`).
      num_classes, dropout_rate, in_channels, bypass, dtype, param_dtype: as in the linen module.
      rngs: initialises the parameters and drives dropout (stream "dropout", else "default").
    """

    def __init__(
        self,
        stages: Sequence[Stage] = V1_1,
        num_classes: int = 1000,
        dropout_rate: float = 0.5,
        in_channels: int = 3,
        bypass: Bypass = "none",
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        if bypass not in ("none", "simple", "complex"):
            raise ValueError(f"expected bypass 'none', 'simple' or 'complex', got {bypass!r}")
        self.stages, self.num_classes, self.dropout_rate = tuple(stages), num_classes, dropout_rate
        self.in_channels, self.bypass, self.dtype, self.param_dtype = in_channels, bypass, dtype, param_dtype
        options = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        channels, names = in_channels, iter(fire_names(self.stages))
        for stage in self.stages:
            if isinstance(stage, Conv):
                self.conv1 = _conv(channels, stage.features, stage.kernel, stage.stride,
                                   kernel_init=kaiming_uniform, **options)  # fmt: skip
                channels = stage.features
            elif isinstance(stage, Fire):
                name = next(names)
                setattr(self, name, FireModule(channels, stage.squeeze, stage.expand1x1, stage.expand3x3, **options))
                if bypass == "complex" and channels != stage.features:
                    setattr(self, f"{name}_bypass", _conv(channels, stage.features, 1, kernel_init=kaiming_uniform, **options))
                channels = stage.features
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.classifier = _conv(channels, num_classes, 1, kernel_init=jax.nn.initializers.normal(0.01), **options)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments but `rngs`: `SqueezeNet(**model.config, rngs=...)` rebuilds it."""
        return {name: getattr(self, name) for name in CONFIG_FIELDS}

    def linen_module(self) -> models.SqueezeNet:
        """The linen module computing what this one computes, for the same parameter tree."""
        return models.SqueezeNet(**self.config)

    def __call__(self, x: jax.Array, *, output: Output = "logits") -> jax.Array | dict[str, jax.Array]:
        """Class logits (N, num_classes), or with `output` the features for a new head:
        "pooled" (N, C), "feature_map" (N, H, W, C), or "stages": {"stride2", "stride4", "stride8",
        "stride16"}, each the last feature map (NHWC) at that stride before the pool that halves it."""
        if output not in OUTPUTS:
            raise ValueError(f"expected output {', '.join(map(repr, OUTPUTS))}, got {output!r}")
        self.linen_module()._check_input(x)
        x = jnp.asarray(x, self.dtype)
        by_stride: dict[str, jax.Array] = {}
        stride, pooled, names = 1, False, iter(fire_names(self.stages))
        for stage, next_stage in zip(self.stages, [*self.stages[1:], None]):
            if isinstance(stage, Conv):
                x = nnx.relu(self.conv1(x))
                stride *= stage.stride
            elif isinstance(stage, MaxPool):
                x = x if pooled else max_pool_3x3_ceil(x)
                pooled, stride = False, stride * 2
                continue
            else:
                name = next(names)
                fire = getattr(self, name)
                if self.bypass != "none" and x.shape[-1] == stage.features:
                    x = fire(x) + x
                elif self.bypass == "complex":
                    x = fire(x) + getattr(self, f"{name}_bypass")(x)
                elif isinstance(next_stage, MaxPool) and output != "stages":
                    x, pooled = max_pool_3x3_ceil_concat(fire.branches(x)), True
                else:
                    x = fire(x)
            by_stride[f"stride{stride}"] = x
        if output == "stages":
            return by_stride
        if output == "feature_map":
            return x
        if output == "pooled":
            return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nnx.relu(self.classifier(self.dropout(x)))
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


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


def load_pretrained(name_or_path: Any, *, rngs: nnx.Rngs | None = None, **options: Any) -> SqueezeNet:
    """The NNX module, in eval mode, from any source `flax_squeezenet.load_pretrained` reads.

    `options` are that function's (model, num_classes, rng, cache_dir, dtype, ...); `rngs` drives
    the module's dropout once in train mode (default `nnx.Rngs(0)`).
    """
    module, variables = pretrained.load_pretrained(name_or_path, **options)
    model = to_nnx(module, variables, rngs=rngs)
    model.eval()
    return model
