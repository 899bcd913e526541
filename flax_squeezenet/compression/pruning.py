"""Magnitude pruning (Han et al. 2015): per-layer masks keeping the largest weights, reached
gradually over training with Zhu & Gupta's (2017) cubic schedule, as an optax transformation.

Densities are given per conv by its path ("conv1", "fire2/expand3x3", "classifier"); biases are
never pruned. `prune_by_magnitude` keeps the masks in its optax state, so they live in the train
state's `opt_state`, are checkpointed with it and resume exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

# The paper's Deep Compression v1.0 model, per conv: the fraction of weights its `.net` file keeps
# (rounded; test_compression_pruning checks them against the file). Overall about 34% are kept.
PAPER_V1_0_DENSITIES: dict[str, float] = {
    "conv1": 1.0,
    **{f"fire{i}/{conv}": 1.0 for i in range(2, 10) for conv in ("squeeze", "expand1x1")},
    **{f"fire{i}/expand3x3": 0.33 for i in range(2, 8)},
    "fire6/expand1x1": 0.5, "fire7/squeeze": 0.5, "fire8/expand1x1": 0.5, "fire9/squeeze": 0.5,
    "fire8/expand3x3": 0.3, "fire9/expand3x3": 0.3,
    "classifier": 0.2,
}  # fmt: skip

# The conv layers of both SqueezeNet variants, by path (the names prune_layer_densities takes).
CONV_LAYERS: tuple[str, ...] = tuple(sorted(PAPER_V1_0_DENSITIES))


def _layer(path: tuple[str, ...]) -> str:
    return "/".join(path[:-1])


def layer_densities(params: Any, density: float | None = None, overrides: Mapping[str, float] | None = None) -> Any:
    """A tree like `params` of target densities (floats): 1.0 for biases; for each kernel its
    entry in `overrides`, else `density`, else its entry in PAPER_V1_0_DENSITIES (else 1.0)."""
    overrides = dict(overrides or {})
    flat = flax.traverse_util.flatten_dict(params)
    known = {_layer(path) for path, leaf in flat.items() if jnp.ndim(leaf) >= 2}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"density overrides name no conv layer: {', '.join(unknown)} (layers: {', '.join(sorted(known))})"
        )
    densities = {}
    for path, leaf in flat.items():
        layer = _layer(path)
        if jnp.ndim(leaf) < 2:
            value = 1.0
        elif layer in overrides:
            value = overrides[layer]
        else:
            value = density if density is not None else PAPER_V1_0_DENSITIES.get(layer, 1.0)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"density of {layer} must be in (0, 1], got {value}")
        densities[path] = float(value)
    return flax.traverse_util.unflatten_dict(densities)


def magnitude_mask(kernel: jax.Array, density: float | jax.Array) -> jax.Array:
    """Boolean mask keeping the round(density * size) weights of largest magnitude (ties: the first)."""
    size = kernel.size
    keep = jnp.round(density * size).astype(jnp.int32)
    rank = jnp.empty(size, jnp.int32).at[jnp.argsort(-jnp.abs(kernel).ravel(), stable=True)].set(jnp.arange(size))
    return (rank < keep).reshape(kernel.shape)


def magnitude_masks(params: Any, densities: Any) -> Any:
    """`magnitude_mask` of every leaf of `params` at its density (a tree like it, see `layer_densities`)."""
    def mask(leaf: jax.Array, density: float) -> jax.Array:
        return magnitude_mask(leaf, density) if density < 1 else jnp.ones(leaf.shape, bool)

    return jax.tree_util.tree_map(mask, params, densities)


def apply_masks(params: Any, masks: Any) -> Any:
    """`params` with the weights their masks drop set to exactly zero."""
    return jax.tree_util.tree_map(lambda leaf, mask: jnp.where(mask, leaf, jnp.zeros_like(leaf)), params, masks)


def kernel_density(params: Any) -> float:
    """The fraction of the conv kernels' weights that are not zero (biases are not counted)."""
    kernels = [leaf for leaf in jax.tree_util.tree_leaves(params) if jnp.ndim(leaf) >= 2]
    return float(sum(jnp.count_nonzero(leaf) for leaf in kernels) / sum(leaf.size for leaf in kernels))


def cubic_density(
    step: jax.Array, final_density: float, begin_step: int, end_step: int, initial_density: float = 1.0
) -> jax.Array:
    """Zhu & Gupta's schedule: `initial_density` until `begin_step`, falling along a cubic to
    `final_density` at `end_step`, constant after."""
    progress = jnp.clip((step - begin_step) / max(end_step - begin_step, 1), 0.0, 1.0)
    return final_density + (initial_density - final_density) * (1.0 - progress) ** 3


class PruningState(NamedTuple):
    """optax state of `prune_by_magnitude`: the step count and the current masks (bool, like params)."""

    count: jax.Array
    masks: Any


def prune_by_magnitude(
    density: float | None = None,
    overrides: Mapping[str, float] | None = None,
    *,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
) -> optax.GradientTransformation:
    """Prune gradually to the per-conv densities `layer_densities(params, density, overrides)`.

    Every `frequency` steps from `begin_step`, and at `end_step`, the masks are recomputed from the
    magnitudes of the updated weights at the density of `cubic_density`. Chain it last: the
    updates it returns bring every masked weight to exactly zero, and leave kept weights' updates
    unchanged. Deterministic, so replicas under pmap or a mesh compute the same masks.
    """
    if frequency < 1 or end_step < begin_step:
        raise ValueError(
            f"expected frequency >= 1 and end_step >= begin_step, got {frequency}, {begin_step}, {end_step}"
        )

    def init(params: Any) -> PruningState:
        layer_densities(params, density, overrides)  # a bad override fails here, not in the first step
        masks = jax.tree_util.tree_map(lambda leaf: jnp.ones(leaf.shape, bool), params)
        return PruningState(jnp.zeros([], jnp.int32), masks)

    def update(updates: Any, state: PruningState, params: Any = None) -> tuple[Any, PruningState]:
        if params is None:
            raise ValueError("prune_by_magnitude needs the params: call update(updates, state, params)")
        densities = layer_densities(params, density, overrides)
        step = state.count
        periodic = (step >= begin_step) & (step <= end_step) & ((step - begin_step) % frequency == 0)
        due = periodic | (step == end_step)  # the final densities even when frequency does not divide the span

        def recompute(candidate: Any) -> Any:
            targets = jax.tree_util.tree_map(lambda d: cubic_density(step, d, begin_step, end_step), densities)
            return jax.tree_util.tree_map(
                lambda leaf, mask, final, target: magnitude_mask(leaf, target) if final < 1 else mask,
                candidate, state.masks, densities, targets,
            )  # fmt: skip

        candidate = apply_masks(optax.apply_updates(params, updates), state.masks)  # pruned ones rank last
        masks = jax.lax.cond(due, recompute, lambda _: state.masks, candidate)
        masked_updates = jax.tree_util.tree_map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        return masked_updates, PruningState(step + 1, masks)

    return optax.GradientTransformation(init, update)
