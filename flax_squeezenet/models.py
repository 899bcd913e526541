"""SqueezeNet (Iandola et al., 2016) as Flax linen modules, NHWC.

Every variant is one `SqueezeNet` module driven by a description of its stages, so torchvision's
v1.0 and v1.1, the paper's bypass variants and its metaparameter family all share one code path.
Parameter names follow the paper: `conv1`, `fire2` ... `fire9`, `classifier` (the paper's conv10).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Output = Literal["logits", "pooled", "feature_map"]
Bypass = Literal["none", "simple", "complex"]


@dataclasses.dataclass(frozen=True)
class Conv:
    """The stem convolution (paper: conv1), followed by ReLU, no padding."""

    features: int
    kernel: int
    stride: int


@dataclasses.dataclass(frozen=True)
class Fire:
    """A Fire module's filter counts: s1x1, e1x1 and e3x3 in the paper's notation."""

    squeeze: int
    expand1x1: int
    expand3x3: int

    @property
    def features(self) -> int:
        return self.expand1x1 + self.expand3x3


@dataclasses.dataclass(frozen=True)
class MaxPool:
    """3x3 max-pooling with stride 2 and ceil-mode output size, as torchvision pools."""


Stage = Union[Conv, Fire, MaxPool]

POOL = MaxPool()

V1_0: tuple[Stage, ...] = (
    Conv(96, 7, 2), POOL,
    Fire(16, 64, 64), Fire(16, 64, 64), Fire(32, 128, 128), POOL,
    Fire(32, 128, 128), Fire(48, 192, 192), Fire(48, 192, 192), Fire(64, 256, 256), POOL,
    Fire(64, 256, 256),
)  # fmt: skip

V1_1: tuple[Stage, ...] = (
    Conv(64, 3, 2), POOL,
    Fire(16, 64, 64), Fire(16, 64, 64), POOL,
    Fire(32, 128, 128), Fire(32, 128, 128), POOL,
    Fire(48, 192, 192), Fire(48, 192, 192), Fire(64, 256, 256), Fire(64, 256, 256),
)  # fmt: skip


def metaparameter_stages(
    base_e: int = 128,
    incr_e: int = 128,
    pct3x3: float = 0.5,
    freq: int = 2,
    sr: float = 0.125,
    num_fire: int = 8,
) -> tuple[Stage, ...]:
    """The paper's Section 5 design space on the v1.0 macro-architecture; defaults give v1.0.

    Fire module i (from 0) has e_i = base_e + incr_e * floor(i / freq) expand filters, of which
    a fraction pct3x3 are 3x3, and sr * e_i squeeze filters.
    """
    if base_e < 1 or incr_e < 0 or freq < 1 or num_fire < 1:
        raise ValueError(
            "expected base_e >= 1, incr_e >= 0, freq >= 1 and num_fire >= 1, got "
            f"base_e={base_e}, incr_e={incr_e}, freq={freq}, num_fire={num_fire}"
        )
    if not 0.0 < pct3x3 < 1.0:
        raise ValueError(f"expected 0 < pct3x3 < 1, got {pct3x3}")
    if not 0.0 < sr <= 1.0:
        raise ValueError(f"expected 0 < sr <= 1, got {sr}")
    fires = []
    for i in range(num_fire):
        e = base_e + incr_e * (i // freq)
        e3x3 = max(1, round(e * pct3x3))
        e1x1 = max(1, e - e3x3)
        fires.append(Fire(max(1, round(sr * e)), e1x1, e3x3))
    # v1.0 pools after conv1, fire4 and fire8: after the 3rd and the 7th Fire module.
    stages: list[Stage] = [Conv(96, 7, 2), POOL]
    for i, fire in enumerate(fires):
        stages.append(fire)
        if i in (2, 6) and i != num_fire - 1:
            stages.append(POOL)
    return tuple(stages)


def _pool_size(size: int) -> int:
    return (size - 2) // 2 + 1  # ceil((size - 3) / 2) + 1; at least 2 pixels in are needed.


def feature_map_size(stages: Sequence[Stage], size: int) -> int:
    """Spatial size of the last feature map for an input of `size` pixels; < 1 if too small."""
    for stage in stages:
        if size < 1:
            return size
        if isinstance(stage, Conv):
            size = (size - stage.kernel) // stage.stride + 1
        elif isinstance(stage, MaxPool):
            size = _pool_size(size)
    return size


def min_input_size(stages: Sequence[Stage]) -> int:
    """The smallest input height or width the net accepts (torchvision: 21 for v1.0, 17 for v1.1)."""
    size = 1
    while feature_map_size(stages, size) < 1:
        size += 1
    return size


def _ceil_mode_padding(x: jnp.ndarray) -> list[tuple[int, int]]:
    """NHWC padding that makes a VALID 3x3/2 pooling give PyTorch's ceil_mode=True output size."""
    return [(0, 0)] + [(0, (_pool_size(size) - 1) * 2 + 3 - size) for size in x.shape[1:3]] + [(0, 0)]


def _pool_windows(x: jnp.ndarray) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
    """The -inf padded input and its nine 3x3/2 window positions as strided slices, row-major."""
    padded = jnp.pad(x, _ceil_mode_padding(x), constant_values=-jnp.inf)
    rows, cols = _pool_size(x.shape[1]), _pool_size(x.shape[2])
    windows = [
        padded[:, i : i + 2 * rows - 1 : 2, j : j + 2 * cols - 1 : 2, :]
        for i in range(3)
        for j in range(3)
    ]
    return padded, windows


# Speed (XLA:CPU): 3x3/2 max-pooling as the maximum of its nine strided window slices, with a
# hand-written gradient, computes exactly what `nn.max_pool` (reduce_window) computes, forward
# and backward: the gradient goes to the first maximum of each window in row-major order, as
# reduce_window's and PyTorch's do. XLA fuses the slices into one elementwise loop, where its
# reduce_window and the select_and_scatter of its gradient were 3-5x slower and were a third of
# a training step. tests/test_speed_equivalence.py checks both against `nn.max_pool`.
@jax.custom_vjp
def _max_pool_ceil(x: jnp.ndarray) -> jnp.ndarray:
    """3x3/2 max-pooling with PyTorch's ceil_mode=True: pad the bottom and right with -inf."""
    return functools.reduce(jnp.maximum, _pool_windows(x)[1])


def _max_pool_ceil_forward(x: jnp.ndarray) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray]]:
    pooled = _max_pool_ceil(x)
    return pooled, (x, pooled)


def _max_pool_ceil_backward(
    residuals: tuple[jnp.ndarray, jnp.ndarray], grad: jnp.ndarray
) -> tuple[jnp.ndarray]:
    x, pooled = residuals
    padded, windows = _pool_windows(x)
    zero = jnp.zeros((), grad.dtype)
    already_chosen = jnp.zeros(pooled.shape, bool)
    grad_padded = jnp.zeros(padded.shape, grad.dtype)
    for index, window in enumerate(windows):
        i, j = divmod(index, 3)
        chosen = (window == pooled) & ~already_chosen
        already_chosen = already_chosen | chosen
        # Scatter this window position's share back to the input pixels it read (stride 2).
        spread = (
            (0, 0, 0),
            (i, padded.shape[1] - i - 2 * pooled.shape[1] + 1, 1),
            (j, padded.shape[2] - j - 2 * pooled.shape[2] + 1, 1),
            (0, 0, 0),
        )
        grad_padded = grad_padded + jax.lax.pad(jnp.where(chosen, grad, zero), zero, spread)
    return (grad_padded[:, : x.shape[1], : x.shape[2], :],)


_max_pool_ceil.defvjp(_max_pool_ceil_forward, _max_pool_ceil_backward)


kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")


# Speed (XLA:CPU): a 1x1 convolution with stride 1 is a matrix product over the channel axis.
# Written as one, XLA computes it and both its gradients as matrix multiplications; as a
# convolution, the kernel gradient became a convolution with a whole-image window, 2-5x slower
# (the classifier's alone was a tenth of a training step). The parameters stay nn.Conv's.
# tests/test_speed_equivalence.py checks it against lax.conv_general_dilated.
def _conv_1x1_as_matmul(
    inputs: jnp.ndarray, kernel: jnp.ndarray, window_strides: Sequence[int], padding: Any,
    **conv_options: Any,
) -> jnp.ndarray:  # fmt: skip
    """`lax.conv_general_dilated` for NHWC inputs and a (1, 1, in, out) kernel, stride 1."""
    if kernel.shape[:2] != (1, 1) or tuple(window_strides) != (1, 1):
        raise ValueError(f"expected a 1x1 kernel with stride 1, got {kernel.shape}, {window_strides}")
    contract_channels = (((inputs.ndim - 1,), (0,)), ((), ()))
    return jax.lax.dot_general(
        inputs, kernel[0, 0], contract_channels, precision=conv_options.get("precision")
    )


def _conv_1x1(features: int, **kwargs: Any) -> nn.Conv:
    """A 1x1 nn.Conv (same parameters) computed as a matrix product."""
    return nn.Conv(features, (1, 1), conv_general_dilated=_conv_1x1_as_matmul, **kwargs)


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
        x = nn.relu(_conv_1x1(self.squeeze, name="squeeze", **options)(x))
        e1 = nn.relu(_conv_1x1(self.expand1x1, name="expand1x1", **options)(x))
        e3 = nn.relu(
            nn.Conv(self.expand3x3, (3, 3), padding=((1, 1), (1, 1)), name="expand3x3", **options)(x)
        )
        return e1, e3


# Speed (XLA:CPU): max-pooling works per channel, so pooling a Fire module's output equals
# concatenating its pooled branches. Pooled after the concatenation, the pooling gradient feeds two
# consumers (each branch's channels); XLA then fused its nine strided pieces into neither and wrote
# each one out at full size (0.23 s of a 1.9 s squeezenet1_0 train step, batch 32 at 224 pixels).
# Pooled per branch, each branch's pooling gradient is one fused loop, and the train step ran
# 1.14-1.22x faster (BENCHMARKS.md). tests/test_speed_equivalence.py checks the model against pooling after the
# concatenation.
def _fire_then_pool(fire: FireModule, x: jnp.ndarray) -> jnp.ndarray:
    """`_max_pool_ceil(fire(x))`."""
    return jnp.concatenate([_max_pool_ceil(branch) for branch in fire.branches(x)], axis=-1)


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
      dtype: computation dtype (e.g. jnp.bfloat16); logits and pooled features are float32.
      param_dtype: dtype of the parameters.
    """

    stages: Sequence[Stage] = V1_1
    num_classes: int = 1000
    dropout_rate: float = 0.5
    in_channels: int = 3
    bypass: Bypass = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def min_input_size(self) -> int:
        return min_input_size(self.stages)

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
        if self.bypass not in ("none", "simple", "complex"):
            raise ValueError(f"expected bypass 'none', 'simple' or 'complex', got {self.bypass!r}")

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, train: bool = False, output: Output = "logits"
    ) -> jnp.ndarray:
        """Class logits (N, num_classes), or with `output` the features for a new head:
        "pooled" (N, C) global-average of the last Fire module, "feature_map" (N, H, W, C)."""
        if output not in ("logits", "pooled", "feature_map"):
            raise ValueError(f"expected output 'logits', 'pooled' or 'feature_map', got {output!r}")
        self._check_input(x)
        conv = functools.partial(nn.Conv, dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.asarray(x, self.dtype)
        fire_index = 2
        pooled = False  # whether the Fire module before this MaxPool stage has pooled already
        for stage, next_stage in zip(self.stages, [*self.stages[1:], None]):
            if isinstance(stage, Conv):
                x = conv(stage.features, (stage.kernel,) * 2, (stage.stride,) * 2,
                         padding="VALID", kernel_init=kaiming_uniform, name="conv1")(x)  # fmt: skip
                x = nn.relu(x)
            elif isinstance(stage, MaxPool):
                x = x if pooled else _max_pool_ceil(x)
                pooled = False
            else:
                name = f"fire{fire_index}"
                fire = FireModule(stage.squeeze, stage.expand1x1, stage.expand3x3, dtype=self.dtype,
                                  param_dtype=self.param_dtype, name=name)  # fmt: skip
                if self.bypass != "none" and x.shape[-1] == stage.features:
                    x = fire(x) + x
                elif self.bypass == "complex":
                    shortcut = _conv_1x1(stage.features, dtype=self.dtype, param_dtype=self.param_dtype,
                                         kernel_init=kaiming_uniform, name=f"{name}_bypass")  # fmt: skip
                    x = fire(x) + shortcut(x)
                elif isinstance(next_stage, MaxPool):
                    x, pooled = _fire_then_pool(fire, x), True
                else:
                    x = fire(x)
                fire_index += 1
        if output == "feature_map":
            return x
        if output == "pooled":
            return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = _conv_1x1(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=nn.initializers.normal(0.01), name="classifier")(x)  # fmt: skip
        x = nn.relu(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


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
