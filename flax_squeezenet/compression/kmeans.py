"""One-dimensional k-means (Lloyd's algorithm), jit-compiled, with Deep Compression's linear
initialisation: the centroids start evenly spread over [min, max] of the values."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MAX_ITERATIONS = 300


@functools.partial(jax.jit, static_argnames=("num_clusters", "max_iterations"))
def lloyd_1d(
    values: jax.Array, weights: jax.Array, num_clusters: int, max_iterations: int = MAX_ITERATIONS
) -> tuple[jax.Array, jax.Array]:
    """(centroids ascending, cluster of each value) of k-means over the `values` whose weight is
    above 0, traceable under jit (the others are assigned to their nearest centroid too)."""
    present = weights > 0
    low = jnp.min(jnp.where(present, values, jnp.inf))
    high = jnp.max(jnp.where(present, values, -jnp.inf))
    initial = jnp.linspace(low, high, num_clusters, dtype=values.dtype)

    def assign(centroids: jax.Array) -> jax.Array:
        # Centroids stay sorted under 1-D Lloyd steps, so the nearest is found between midpoints.
        return jnp.searchsorted((centroids[1:] + centroids[:-1]) / 2, values, side="left")

    def step(carry):
        centroids, _, iteration = carry
        cluster = assign(centroids)
        sums = jax.ops.segment_sum(weights * values, cluster, num_clusters)
        counts = jax.ops.segment_sum(weights, cluster, num_clusters)
        updated = jnp.where(counts > 0, sums / jnp.where(counts > 0, counts, 1), centroids)
        return updated, jnp.any(updated != centroids), iteration + 1

    def running(carry):
        _, changed, iteration = carry
        return changed & (iteration < max_iterations)

    centroids, _, _ = jax.lax.while_loop(running, step, (initial, jnp.bool_(True), 0))
    return centroids, assign(centroids)


def kmeans_1d(
    values: np.ndarray, num_clusters: int, max_iterations: int = MAX_ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids float32 ascending, cluster of each value int32) of k-means over `values`.

    Lloyd iterations from the linear initialisation until no centroid moves (at most
    `max_iterations`). A cluster that loses all its values keeps its centroid.
    """
    values = np.asarray(values, np.float32).ravel()
    if values.size == 0:
        raise ValueError("k-means needs at least one value")
    if num_clusters < 1:
        raise ValueError(f"k-means needs at least one cluster, got {num_clusters}")
    # Pad to a power of two (with zero-weight values) so that layers of similar size share a compile.
    padded_size = 1 << (values.size - 1).bit_length()
    padded = np.zeros(padded_size, np.float32)
    padded[: values.size] = values
    weights = np.zeros(padded_size, np.float32)
    weights[: values.size] = 1.0
    padded[values.size :] = values[0]
    centroids, clusters = lloyd_1d(jnp.asarray(padded), jnp.asarray(weights), num_clusters, max_iterations)
    return np.asarray(centroids), np.asarray(clusters[: values.size], np.int32)
