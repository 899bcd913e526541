"""Adaptive rounding, layer after layer: each weight takes the value just below or just above it
(on a shared-weight codebook here; on the int8 grid in `int8_rounding`), whichever brings its
layer's output closest to the source model's on calibration images (AdaRound,
`flax_squeezenet.compression.rounding`), and each bias absorbs the remaining mean shift. The layers are rounded
in the order the model runs them, each against the inputs the layers rounded before it give it,
so that it also makes up for their error. Re-clustering the paper's 8-bit file to 6 bits costs
8.9 points of top-1 with round-to-nearest, 0.9 this way (BENCHMARKS.md, "Deep Compression without
retraining"). No labels are needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import tqdm.auto

from flax_squeezenet.compression.rounding import InputMoments, PairedMoments, round_up_or_down
from flax_squeezenet.weights.compressed import SharedKernel

BATCH_SIZE = 10


class ConvSimulation(Protocol):
    """How the deployed model computes around each conv (e.g. with int8 activations), by conv path."""

    def inputs(self, path: str, inputs: jax.Array) -> jax.Array: ...

    def outputs(self, path: str, outputs: jax.Array) -> jax.Array: ...


def conv_inputs(module: nn.Module, params: Any, images: jax.Array, simulation: ConvSimulation | None = None,
                ) -> dict[str, tuple[nn.Conv, jax.Array]]:  # fmt: skip
    """{conv path ("fire2/squeeze"): (the conv, its input)} of `module` applied to `images`, in call
    order; with `simulation`, each conv's input and output pass through it."""
    inputs = {}

    def record(next_fun, args, kwargs, context):
        if not (isinstance(context.module, nn.Conv) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        if simulation is not None:
            args = (simulation.inputs(path, args[0]), *args[1:])
        inputs[path] = (context.module, args[0])
        outputs = next_fun(*args, **kwargs)
        return outputs if simulation is None else simulation.outputs(path, outputs)

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
        for path, (_, inputs) in conv_inputs(module, params, x).items():
            if id(inputs) not in seen:
                seen[id(inputs)] = []
                groups.append(seen[id(inputs)])
            seen[id(inputs)].append(path)
        return jnp.zeros(())

    jax.eval_shape(trace, image)
    return groups


def paired_moments(module: nn.Module, source: Any, rounded: Any, images: np.ndarray, layers: Sequence[str],
                   simulation: ConvSimulation | None = None) -> dict[str, PairedMoments]:  # fmt: skip
    """The `PairedMoments` of each conv in `layers`' input patches, over every output position,
    when `module` runs with the `source` params and with the `rounded` params on `images` (as
    `simulation` computes, see `conv_inputs`)."""

    @jax.jit
    def sums(source, rounded, batch):
        source_seen, rounded_seen = conv_inputs(module, source, batch), conv_inputs(module, rounded, batch, simulation)
        result = {}
        for layer in layers:
            conv, inputs = source_seen[layer]
            source_rows, rounded_rows = _patches(conv, inputs), _patches(conv, rounded_seen[layer][1])
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


def kernel_rows(kernel: np.ndarray) -> np.ndarray:
    """A Flax (kh, kw, in, out) kernel as (out, in * kh * kw) rows, the patches' feature order."""
    return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)


def rows_to_kernel(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
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
    as_f32 = [jnp.asarray(a, jnp.float32) for a in (kernel_rows(kernel), kernel_rows(lower), kernel_rows(upper),
                                                     moments.rounded.covariance, moments.cross)]  # fmt: skip
    up = np.asarray(round_up_or_down(*as_f32))
    rounded = dataclasses.replace(shared, indices=np.where(rows_to_kernel(up, kernel.shape), upper_index, lower_index))
    shift = moments.bias_shift(kernel_rows(kernel), kernel_rows(rounded.dense()))
    return rounded, (np.asarray(bias, np.float64) + shift).astype(np.float32)


LayerRounding = Callable[[str, np.ndarray, np.ndarray, PairedMoments], tuple[Any, np.ndarray, np.ndarray]]


def round_layer_by_layer(
    module: nn.Module,
    source: Mapping[str, np.ndarray],
    layers: Sequence[str],
    round_layer: LayerRounding,
    images: np.ndarray,
    *,
    simulation: ConvSimulation | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """{"<layer>/kernel": rounded, "<layer>/bias": corrected} for each conv in `layers`, rounded in
    `module`'s order (a Fire module's two expands together: they share their input) on `images`
    (in the input convention the flat params `source` take), the rounded model computing as
    `simulation` says. `round_layer(layer, kernel, bias, moments)` gives (what to store for the
    kernel, its dense value, the corrected bias)."""
    unflatten = lambda flat: flax.traverse_util.unflatten_dict(flat, sep="/")  # noqa: E731
    source_params = unflatten(dict(source))
    rounded, current = {}, dict(source)
    groups = [[layer for layer in group if layer in layers] for group in conv_groups(module, source_params, images[:1])]
    bar = tqdm.auto.tqdm(total=sum(map(len, groups)), desc="adaptive rounding", unit="layer", disable=not progress)
    with bar:
        for group in filter(None, groups):
            moments = paired_moments(module, source_params, unflatten(current), images, group, simulation)
            for layer in group:
                kernel, bias = f"{layer}/kernel", f"{layer}/bias"
                stored, dense, corrected = round_layer(layer, source[kernel], source[bias], moments[layer])
                rounded[kernel], rounded[bias] = stored, corrected
                current[kernel], current[bias] = dense, corrected
                bar.update()
    return rounded


def adaround_shared(
    module: nn.Module,
    source: dict[str, np.ndarray],
    leaves: dict[str, SharedKernel | np.ndarray],
    images: np.ndarray,
    progress: bool = False,
) -> dict[str, SharedKernel | np.ndarray]:
    """`leaves` (shared kernels of the flat params `source`, by path) with every kernel's indices
    chosen by `round_to_codebook` and its bias corrected, by `round_layer_by_layer` on `images`."""

    def round_layer(layer, kernel, bias, moments):
        shared, corrected = round_to_codebook(kernel, leaves[f"{layer}/kernel"], bias, moments)
        return shared, shared.dense(), corrected

    layers = [path.removesuffix("/kernel") for path, leaf in leaves.items() if isinstance(leaf, SharedKernel)]
    return {**leaves, **round_layer_by_layer(module, source, layers, round_layer, images, progress=progress)}
