"""Adaptive rounding of shared weights: each weight takes the shared value just below or just above
it, whichever brings its layer's output closest to the source model's on calibration images
(AdaRound, `flax_squeezenet.rounding`, on the codebook instead of the int8 grid), and each bias
absorbs the remaining mean shift. The layers are rounded in the order the model runs them, each
against the inputs the layers rounded before it give it, so that it also makes up for their error.
Re-clustering the paper's 8-bit file to 6 bits costs 8.9 points of top-1 with round-to-nearest,
0.9 this way (BENCHMARKS.md, "Deep Compression without retraining"). No labels are needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto

from flax_squeezenet.compression.sharing import SharedKernel
from flax_squeezenet.rounding import InputMoments, round_up_or_down

BATCH_SIZE = 10


@dataclasses.dataclass(frozen=True)
class PairedMoments:
    """A conv's input patches in the partly rounded model (`rounded`: their moments), with `cross`,
    their covariance with the source model's patches minus theirs, and `source_mean`, the mean of
    the source model's patches."""

    rounded: InputMoments
    cross: np.ndarray
    source_mean: np.ndarray


def _conv_inputs(module: nn.Module, params: Any, images: jax.Array) -> dict[str, tuple[nn.Conv, jax.Array]]:
    """{conv path ("fire2/squeeze"): (the conv, its input)} of `module` applied to `images`, in call order."""
    inputs = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            inputs["/".join(context.module.path)] = (context.module, args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        module.apply({"params": params}, images)
    return inputs


def _patches(conv: nn.Conv, inputs: jax.Array) -> jax.Array:
    """`conv`'s input patches, one row per output position (features C-major, then kh, kw)."""
    patches = jax.lax.conv_general_dilated_patches(
        inputs, tuple(conv.kernel_size), tuple(conv.strides), conv.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return patches.reshape(-1, patches.shape[-1])


def conv_groups(module: nn.Module, params: Any, image: np.ndarray) -> list[list[str]]:
    """The paths of `module`'s convs in the order it applies them, those that take the same input
    (a Fire module's two expands) in one group."""
    groups: list[list[str]] = []

    def trace(x):
        seen: dict[int, list[str]] = {}
        for path, (_, inputs) in _conv_inputs(module, params, x).items():
            if id(inputs) not in seen:
                seen[id(inputs)] = []
                groups.append(seen[id(inputs)])
            seen[id(inputs)].append(path)
        return jnp.zeros(())

    jax.eval_shape(trace, image)
    return groups


def paired_moments(module: nn.Module, source: Any, rounded: Any, images: np.ndarray,
                   layers: Sequence[str]) -> dict[str, PairedMoments]:  # fmt: skip
    """The `PairedMoments` of each conv in `layers`' input patches, over every output position,
    when `module` runs with the `source` params and with the `rounded` params on `images`."""

    @jax.jit
    def sums(source, rounded, batch):
        source_inputs, rounded_inputs = _conv_inputs(module, source, batch), _conv_inputs(module, rounded, batch)
        result = {}
        for layer in layers:
            conv, inputs = source_inputs[layer]
            source_rows, rounded_rows = _patches(conv, inputs), _patches(conv, rounded_inputs[layer][1])
            count = jnp.asarray(source_rows.shape[0], jnp.float32)
            result[layer] = (count, source_rows.sum(0), rounded_rows.sum(0), rounded_rows.T @ rounded_rows,
                             rounded_rows.T @ source_rows)  # fmt: skip
        return result

    totals: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), BATCH_SIZE):
        for layer, parts in sums(source, rounded, jnp.asarray(images[start : start + BATCH_SIZE])).items():
            parts = [np.asarray(part, np.float64) for part in parts]
            totals[layer] = [a + b for a, b in zip(totals[layer], parts)] if layer in totals else parts
    return {layer: _paired(*parts) for layer, parts in totals.items()}


def _paired(count, source_sum, rounded_sum, rounded_outer, mixed_outer) -> PairedMoments:
    source_mean, rounded_mean = source_sum / count, rounded_sum / count
    covariance = rounded_outer / count - np.outer(rounded_mean, rounded_mean)
    cross = mixed_outer / count - np.outer(rounded_mean, source_mean) - covariance
    return PairedMoments(InputMoments(rounded_mean, covariance), cross, source_mean)


def _as_rows(kernel: np.ndarray) -> np.ndarray:
    """A Flax (kh, kw, in, out) kernel as (out, in * kh * kw) rows, the patches' feature order."""
    return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)


def _from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    kh, kw, cin, cout = shape
    return rows.reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)


def round_to_codebook(kernel: np.ndarray, shared: SharedKernel, bias: np.ndarray, moments: PairedMoments,
                      ) -> tuple[SharedKernel, np.ndarray]:  # fmt: skip
    """(`shared` with each non-zero weight of `kernel` pointing at the codebook value just below or
    just above it, chosen by AdaRound for `moments`; the bias corrected for the output's mean
    shift). The codebook is unchanged and zeros stay zero; a weight outside the codebook's range
    keeps the nearest end."""
    kernel = np.asarray(kernel, np.float32)
    used = np.unique(shared.indices[kernel != 0])
    order = used[np.argsort(shared.codebook[used], kind="stable")]
    values = shared.codebook[order]
    above = np.clip(np.searchsorted(values, kernel, side="left"), 0, len(values) - 1)
    below = np.where(values[above] > kernel, np.maximum(above - 1, 0), above)
    lower_index = np.where(kernel != 0, order[below], 0).astype(shared.indices.dtype)
    upper_index = np.where(kernel != 0, order[above], 0).astype(shared.indices.dtype)
    lower, upper = shared.codebook[lower_index], shared.codebook[upper_index]
    as_f32 = [jnp.asarray(a, jnp.float32) for a in (_as_rows(kernel), _as_rows(lower), _as_rows(upper),
                                                     moments.rounded.covariance, moments.cross)]  # fmt: skip
    up = np.asarray(round_up_or_down(*as_f32))
    rounded = dataclasses.replace(shared, indices=np.where(_from_rows(up, kernel.shape), upper_index, lower_index))
    shift = _as_rows(kernel) @ moments.source_mean - _as_rows(rounded.dense()) @ moments.rounded.mean
    return rounded, (np.asarray(bias, np.float64) + shift).astype(np.float32)


def adaround_shared(
    module: nn.Module,
    source: dict[str, np.ndarray],
    leaves: dict[str, SharedKernel | np.ndarray],
    images: np.ndarray,
    progress: bool = False,
) -> dict[str, SharedKernel | np.ndarray]:
    """`leaves` (shared kernels of the flat params `source`, by path) with every kernel's indices
    chosen by `round_to_codebook` and its bias corrected, layer after layer in `module`'s order (a
    Fire module's two expands together: they share their input), on `images` (in the input
    convention `source` takes)."""
    unflatten = lambda flat: flax.traverse_util.unflatten_dict(flat, sep="/")  # noqa: E731
    source_params = unflatten(source)
    rounded, current = dict(leaves), dict(source)
    groups = [[layer for layer in group if isinstance(leaves.get(f"{layer}/kernel"), SharedKernel)]
              for group in conv_groups(module, source_params, images[:1])]  # fmt: skip
    bar = tqdm.auto.tqdm(total=sum(map(len, groups)), desc="adaptive rounding", unit="layer", disable=not progress)
    with bar:
        for group in filter(None, groups):
            moments = paired_moments(module, source_params, unflatten(current), images, group)
            for layer in group:
                kernel, bias = f"{layer}/kernel", f"{layer}/bias"
                rounded[kernel], rounded[bias] = round_to_codebook(source[kernel], leaves[kernel], source[bias],
                                                                   moments[layer])  # fmt: skip
                current[kernel], current[bias] = rounded[kernel].dense(), rounded[bias]
                bar.update()
    return rounded
