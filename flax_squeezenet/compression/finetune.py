"""Fine-tuning shared values without labels: each codebook entry moves by the sum of the gradients
of the weights that share it (Deep Compression's centroid update), the loss being the divergence
of the compressed model's predictions from a reference model's (knowledge distillation) on
unlabeled images."""

from __future__ import annotations

import dataclasses

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm.auto

from flax_squeezenet.compression.sharing import centroid_gradients
from flax_squeezenet.weights.compressed import CompressedModel, SharedKernel
from flax_squeezenet.weights.deepcompression import CAFFE_BGR_MEAN
from flax_squeezenet.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD
from flax_squeezenet.zoo.models import SqueezeNet


def stored_input(images: np.ndarray, input_convention: str) -> np.ndarray:
    """torchvision-normalised RGB `images` in the input convention the stored weights take."""
    if input_convention == "torchvision":
        return images
    rgb_0_255 = 255.0 * (images * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN))
    return (rgb_0_255[..., ::-1] - np.asarray(CAFFE_BGR_MEAN)).astype(np.float32)


def distill_codebooks(
    module: SqueezeNet,
    compressed: CompressedModel,
    reference_logits: np.ndarray,
    images: np.ndarray,
    *,
    epochs: int = 3,
    batch_size: int = 25,
    learning_rate: float = 1e-4,
    progress: bool = False,
) -> CompressedModel:
    """`compressed` with its codebooks fine-tuned (Adam) so that `module`'s logits on `images`
    (torchvision-normalised) approach `reference_logits`. Indices, zeros and biases are unchanged."""
    shared = {path: leaf for path, leaf in compressed.leaves.items() if isinstance(leaf, SharedKernel)}
    fixed = {path: jnp.asarray(leaf) for path, leaf in compressed.leaves.items() if path not in shared}
    indices = {path: jnp.asarray(leaf.indices, jnp.int32) for path, leaf in shared.items()}
    codebooks = {path: jnp.asarray(leaf.codebook) for path, leaf in shared.items()}
    inputs = stored_input(np.asarray(images, np.float32), compressed.input_convention)
    optimizer = optax.adam(learning_rate)

    def loss(params, batch, targets):
        logits = module.apply({"params": params}, batch)
        return optax.softmax_cross_entropy(logits, jax.nn.softmax(targets)).mean()

    @jax.jit
    def step(codebooks, opt_state, batch, targets):
        kernels = {path: codebooks[path][indices[path]] for path in codebooks}
        params = flax.traverse_util.unflatten_dict({**fixed, **kernels}, sep="/")
        grads = flax.traverse_util.flatten_dict(jax.grad(loss)(params, batch, targets), sep="/")
        codebook_grads = {
            path: centroid_gradients(grads[path], indices[path], codebook.shape[0])
            for path, codebook in codebooks.items()
        }  # fmt: skip
        updates, opt_state = optimizer.update(codebook_grads, opt_state, codebooks)
        return optax.apply_updates(codebooks, updates), opt_state

    opt_state = optimizer.init(codebooks)
    batches = [(start, start + batch_size) for start in range(0, len(inputs), batch_size)]
    for iteration in tqdm.auto.tqdm(range(epochs * len(batches)), desc="fine-tuning codebooks", disable=not progress):
        start, stop = batches[iteration % len(batches)]
        codebooks, opt_state = step(codebooks, opt_state, inputs[start:stop], reference_logits[start:stop])
    tuned = {path: dataclasses.replace(leaf, codebook=np.asarray(codebooks[path])) for path, leaf in shared.items()}
    return dataclasses.replace(compressed, leaves={**compressed.leaves, **tuned})

