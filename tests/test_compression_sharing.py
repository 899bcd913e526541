"""k-means weight sharing against a brute-force reference, and the centroids' fine-tuning gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_squeezenet.compression.kmeans import kmeans_1d
from flax_squeezenet.compression.sharing import centroid_gradients, fine_tune_codebook, share_weights


def brute_force_kmeans(values: np.ndarray, k: int, iterations: int = 300) -> np.ndarray:
    """Lloyd's algorithm from the linear initialisation, nearest centroid by exhaustive search."""
    centroids = np.linspace(values.min(), values.max(), k)
    for _ in range(iterations):
        cluster = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
        updated = np.array([values[cluster == c].mean() if np.any(cluster == c) else centroids[c] for c in range(k)])
        if np.allclose(updated, centroids, rtol=0, atol=1e-7):
            break
        centroids = updated
    return centroids


@pytest.mark.parametrize("size, k, seed", [(50, 3, 0), (200, 8, 1), (1000, 16, 2), (37, 37, 3)])
def test_kmeans_matches_brute_force(size, k, seed):
    values = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    centroids, clusters = kmeans_1d(values, k)
    np.testing.assert_allclose(centroids, brute_force_kmeans(values.astype(np.float64), k), atol=1e-5)
    nearest = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
    np.testing.assert_array_equal(clusters, nearest)


def test_kmeans_starts_from_min_and_max():
    centroids, _ = kmeans_1d(np.array([0.0, 10.0], np.float32), 2)
    np.testing.assert_array_equal(centroids, [0.0, 10.0])


def test_sharing_keeps_zeros_and_uses_at_most_2_to_the_bits_values():
    kernel = np.random.default_rng(4).standard_normal((3, 3, 8, 16)).astype(np.float32)
    kernel[kernel < -1.0] = 0.0
    shared = share_weights(kernel, 4)
    assert shared.codebook.shape == (16,) and shared.codebook[0] == 0
    assert np.array_equal(shared.dense() == 0, kernel == 0)
    assert np.all(shared.indices[kernel != 0] > 0)
    assert np.max(np.abs(shared.dense() - kernel)) < 0.3


def test_sharing_is_lossless_for_already_shared_kernels():
    values = np.random.default_rng(5).standard_normal(255).astype(np.float32)
    kernel = values[np.random.default_rng(6).integers(0, 255, (1, 1, 64, 64))]
    np.testing.assert_array_equal(share_weights(kernel, 8).dense(), kernel)


def test_sharing_refuses_bad_bit_widths():
    with pytest.raises(ValueError, match="1 to 8"):
        share_weights(np.ones((2, 2)), 9)


def test_centroid_gradient_is_the_gradient_of_the_loss_wrt_the_shared_values():
    rng = np.random.default_rng(7)
    shared = share_weights(rng.standard_normal((1, 1, 16, 8)).astype(np.float32) * (rng.random((1, 1, 16, 8)) > 0.5), 3)
    inputs = jnp.asarray(rng.standard_normal((4, 16)), jnp.float32)

    def loss_of_kernel(kernel):
        return jnp.sum(jnp.tanh(inputs @ kernel[0, 0]) ** 2)

    kernel_gradient = jax.grad(loss_of_kernel)(jnp.asarray(shared.dense()))
    codebook_gradient = jax.grad(lambda codebook: loss_of_kernel(codebook[shared.indices]))(
        jnp.asarray(shared.codebook)
    )
    got = centroid_gradients(kernel_gradient, shared.indices, shared.codebook.size)
    np.testing.assert_allclose(got[1:], codebook_gradient[1:], rtol=1e-5, atol=1e-6)
    assert got[0] == 0
    tuned = fine_tune_codebook(jnp.asarray(shared.codebook), kernel_gradient, shared.indices, 0.1)
    assert tuned[0] == 0 and not np.allclose(tuned[1:], shared.codebook[1:])
