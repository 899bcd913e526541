"""Trained quantization (Deep Compression's weight sharing with centroid fine-tuning) as an optax
transformation for training.

`with_shared_weights(optimizer, bits)` clusters every conv kernel once, when the optimizer state is
created (k-means over its non-zero weights from the linear initialisation, `2**bits - 1` centroids,
so that the `.sqz` file's codebook of 2**bits entries, whose entry 0 is 0.0, holds them exactly).
Its first two updates move every weight onto its cluster's mean; every later update gives each weight
of a cluster the cluster's summed gradient (the paper's centroid update) before `optimizer` sees
it, so the weights of a cluster stay equal and zeros stay zero. The clusters live in the optax
state: they are in the train state's `opt_state`, checkpointed with it, and resume exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import optax

from flax_squeezenet.compression.kmeans import lloyd_1d
from flax_squeezenet.compression.sharing import centroid_gradients
from flax_squeezenet.weights.compressed import check_bits

# Updates that only move weights onto their clusters' values, before the centroid updates start.
SNAP_UPDATES = 2


def layer_bits_tree(params: Any, bits: int, overrides: Mapping[str, int] | None = None) -> dict[tuple[str, ...], int]:
    """{kernel path: bits per weight}: `overrides[conv path]` (e.g. "fire9/expand3x3"), else `bits`.

    ValueError naming the conv layers when an override names none of them or a value is out of range.
    """
    overrides = dict(overrides or {})
    kernels = [path for path, leaf in flax.traverse_util.flatten_dict(params).items() if jnp.ndim(leaf) >= 2]
    layers = {"/".join(path[:-1]) for path in kernels}
    unknown = sorted(set(overrides) - layers)
    if unknown:
        raise ValueError(f"bits overrides name no conv layer: {', '.join(unknown)} (layers: {', '.join(sorted(layers))})")
    for value in [bits, *overrides.values()]:
        check_bits(value)
    return {path: overrides.get("/".join(path[:-1]), bits) for path in kernels}


def cluster_kernel(kernel: jax.Array, bits: int) -> jax.Array:
    """uint8 like `kernel`: 0 where it is zero, else 1 + its k-means cluster among the non-zero weights."""
    values = jnp.ravel(kernel).astype(jnp.float32)
    # Padded with ignored zeros to a power of two, so that kernels of similar size share a compile.
    padded = jnp.zeros(1 << (values.size - 1).bit_length(), jnp.float32).at[: values.size].set(values)
    _, clusters = lloyd_1d(padded, (padded != 0).astype(jnp.float32), 2**bits - 1)
    return jnp.where(values != 0, clusters[: values.size] + 1, 0).astype(jnp.uint8).reshape(kernel.shape)


def snap_to_centroids(kernel: jax.Array, clusters: jax.Array, bits: int) -> jax.Array:
    """`kernel` with every weight replaced by the mean of its cluster (cluster 0, the zeros, stays 0)."""
    index = jnp.ravel(clusters).astype(jnp.int32)
    sums = jax.ops.segment_sum(jnp.ravel(kernel), index, 2**bits)
    counts = jax.ops.segment_sum(jnp.ones_like(index, kernel.dtype), index, 2**bits)
    means = (sums / jnp.maximum(counts, 1)).at[0].set(0.0)
    return means[index].reshape(kernel.shape)


def snap_to_cluster_maximum(kernel: jax.Array, clusters: jax.Array, bits: int) -> jax.Array:
    """`kernel` with every weight replaced by the largest weight of its cluster (the zeros stay 0)."""
    index = jnp.ravel(clusters).astype(jnp.int32)
    maxima = jax.ops.segment_max(jnp.ravel(kernel), index, 2**bits).at[0].set(0.0)
    return maxima[index].reshape(kernel.shape)


def summed_gradient(gradient: jax.Array, clusters: jax.Array, bits: int) -> jax.Array:
    """Each weight's gradient replaced by its cluster's summed gradient (0 for the zeros' cluster)."""
    index = jnp.ravel(clusters).astype(jnp.int32)
    return centroid_gradients(gradient, index, 2**bits)[index].reshape(gradient.shape)


class SharingState(NamedTuple):
    """optax state of `with_shared_weights`: the update count, each kernel's clusters (uint8, like
    it; a 0-d placeholder for biases) and the wrapped optimizer's state."""

    count: jax.Array
    clusters: Any
    inner: Any


def with_shared_weights(
    optimizer: optax.GradientTransformation, bits: int, layer_bits: Mapping[str, int] | None = None
) -> optax.GradientTransformation:
    """`optimizer` training shared weights: `bits` per weight in every conv kernel, or
    `layer_bits[conv path]`; biases train as `optimizer` alone trains them.

    The first `SNAP_UPDATES` updates only move the weights onto their centroids (the wrapped
    optimizer does not step, and the batches' gradients are unused); from then on `optimizer`
    receives the summed gradients and the params as they are. Its transformations are elementwise
    or global (Adam, SGD, weight decay on the params, clipping by global norm), so all weights of a
    cluster get the same update and stay exactly equal; a zero weight gets a zero gradient and stays
    zero (tests/test_train_sharing.py). Deterministic, so replicas under pmap or a mesh agree.
    """

    def init(params: Any) -> SharingState:
        bits_by_path = layer_bits_tree(params, bits, layer_bits)
        flat = flax.traverse_util.flatten_dict(params)
        clusters = {
            path: cluster_kernel(leaf, bits_by_path[path]) if path in bits_by_path else jnp.zeros([], jnp.uint8)
            for path, leaf in flat.items()
        }  # fmt: skip
        return SharingState(jnp.zeros([], jnp.int32), flax.traverse_util.unflatten_dict(clusters), optimizer.init(params))

    def update(updates: Any, state: SharingState, params: Any = None) -> tuple[Any, SharingState]:
        if params is None:
            raise ValueError("with_shared_weights needs the params: call update(updates, state, params)")
        bits_by_path = layer_bits_tree(params, bits, layer_bits)
        flat_params = flax.traverse_util.flatten_dict(params)
        flat_clusters = flax.traverse_util.flatten_dict(state.clusters)

        def snap(target):
            def move(_):
                moves = {
                    path: target(leaf, flat_clusters[path], bits_by_path[path]) - leaf
                    if path in bits_by_path else jnp.zeros_like(leaf)
                    for path, leaf in flat_params.items()
                }  # fmt: skip
                return flax.traverse_util.unflatten_dict(moves), state.inner

            return move

        def centroid_step(_):
            flat_updates = flax.traverse_util.flatten_dict(updates)
            summed = {
                path: summed_gradient(gradient, flat_clusters[path], bits_by_path[path])
                if path in bits_by_path else gradient
                for path, gradient in flat_updates.items()
            }  # fmt: skip
            return optimizer.update(flax.traverse_util.unflatten_dict(summed), state.inner, params)

        # p + (centroid - p) need not round to the centroid: the second snap, onto a value its
        # cluster's weights are all within rounding of, is exact (Sterbenz), so they become equal.
        phase = jnp.minimum(state.count, SNAP_UPDATES)
        branches = [snap(snap_to_centroids), snap(snap_to_cluster_maximum), centroid_step]
        new_updates, inner = jax.lax.switch(phase, branches, None)
        return new_updates, SharingState(optax.safe_int32_increment(state.count), state.clusters, inner)

    return optax.GradientTransformation(init, update)
