"""Weight sharing (Deep Compression's trained quantization): a kernel as a small codebook of
shared values and, per weight, the index of its value. Index 0 always holds 0.0: pruned weights
(and the sparse format's fillers) point at it; the other 2**bits - 1 entries are k-means centroids
of the kept weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from flax_squeezenet.compression.kmeans import kmeans_1d
from flax_squeezenet.weights.compressed import SharedKernel, check_bits


def share_weights(kernel: np.ndarray, bits: int) -> SharedKernel:
    """`kernel` with its non-zero weights shared among 2**bits - 1 values; zeros stay zero.

    A kernel with at most 2**bits - 1 distinct non-zero values keeps them exactly (it was shared
    already); otherwise the values are k-means centroids from the linear initialisation.
    """
    check_bits(bits)
    kernel = np.asarray(kernel, np.float32)
    size = 2**bits
    codebook = np.zeros(size, np.float32)
    indices = np.zeros(kernel.shape, np.uint8)
    kept = kernel != 0
    if not kept.any():
        return SharedKernel(codebook, indices)
    distinct, inverse = np.unique(kernel[kept], return_inverse=True)
    if distinct.size < size:
        codebook[1 : 1 + distinct.size] = distinct
        indices[kept] = 1 + inverse
    else:
        centroids, clusters = kmeans_1d(kernel[kept], size - 1)
        codebook[1:] = centroids
        indices[kept] = 1 + clusters
    return SharedKernel(codebook, indices)


def centroid_gradients(kernel_gradient: jax.Array, indices: jax.Array, codebook_size: int) -> jax.Array:
    """Each shared value's gradient: the sum of the gradients of the weights that use it, as in
    the paper's centroid fine-tuning. The zero entry (index 0) gets none: pruned weights stay 0."""
    sums = jax.ops.segment_sum(jnp.ravel(kernel_gradient), jnp.ravel(indices).astype(jnp.int32), codebook_size)
    return sums.at[0].set(0.0)


def fine_tune_codebook(
    codebook: jax.Array, kernel_gradient: jax.Array, indices: jax.Array, learning_rate: float
) -> jax.Array:
    """The codebook after one gradient step on its shared values (index 0 stays 0.0)."""
    return codebook - learning_rate * centroid_gradients(kernel_gradient, indices, codebook.shape[0])
