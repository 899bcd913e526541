"""The classifier of a fine-tuning run started as a linear probe: logistic regression on the frozen
pretrained features of the train images, fitted before the first step (linear probing then
fine-tuning, Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution").

SqueezeNet's classifier is a 1x1 conv, a ReLU, then the global average: the fitted weights are set
with a bias shift that keeps every location's output above zero on the fitted images, so the ReLU
passes it and the average of the conv equals the regression on the averaged features (a shift of
every logit leaves the softmax unchanged). Training SGD on the fresh classifier alone learned far
slower (BENCHMARKS.md, "Your photos").
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train.data import transforms

logger = logging.getLogger(__name__)

MAX_IMAGES = 4000  # the train images the probe is fitted on (a fixed choice by the seed)
L2 = 0.05  # the L2 weight on standardised features
STEPS = 100  # L-BFGS iterations


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = L2,
                 steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(W [D, K], b [K]) minimising mean softmax cross-entropy + `l2` * |W|^2, by optax's L-BFGS."""
    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels)

    def loss(params):
        logits = x @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + l2 * jnp.sum(params["w"] ** 2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(params, updates), state), None

    params = {"w": jnp.zeros((features.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None, length=steps)
    return np.asarray(params["w"]), np.asarray(params["b"])


def train_feature_maps(run: Any, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """(feature maps [N, H, W, C] of the last Fire module, labels [N]) of up to `MAX_IMAGES` train
    images prepared as evaluation prepares them."""
    dataset, settings = run.data.dataset, run.data.settings
    count = min(MAX_IMAGES, len(dataset.train))
    chosen = np.random.default_rng(settings.seed).permutation(len(dataset.train))[:count]
    prepare = transforms.EvalTransform(settings.preprocessing)
    apply = jax.jit(lambda x: run.model.apply({"params": params}, x, output="feature_map"))
    maps, labels = [], []
    for start in range(0, count, settings.eval_batch_size):
        examples = [prepare.map(dataset.train[int(i)]) for i in chosen[start:start + settings.eval_batch_size]]
        maps.append(np.asarray(apply(np.stack([e["image"] for e in examples])), np.float32))
        labels += [int(e["label"]) for e in examples]
    return np.concatenate(maps), np.asarray(labels)


def probe_classifier(run: Any, params: Any) -> Any:
    """`params` with the classifier conv set to the linear probe fitted on the train images (see the module docstring)."""
    maps, labels = train_feature_maps(run, params)
    pooled = maps.mean(axis=(1, 2))
    mean, std = pooled.mean(0), pooled.std(0) + 1e-6
    w, b = fit_logistic((pooled - mean) / std, labels, run.data.info.num_classes)
    kernel = w / std[:, None]
    bias = b - (mean / std) @ w
    lowest = float((maps @ kernel + bias).min())
    bias = bias + max(0.0, -lowest) + 1.0  # every location above zero: the ReLU passes the conv's output
    accuracy = float(np.mean((pooled @ kernel + bias).argmax(-1) == labels))
    logger.info("classifier initialised as a linear probe on %d train images (their top-1 %.3f)", len(labels), accuracy)
    classifier = params["classifier"]
    shape = classifier["kernel"].shape
    return {**params, "classifier": {**classifier, "kernel": jnp.asarray(kernel.reshape(shape), classifier["kernel"].dtype),
                                     "bias": jnp.asarray(bias, classifier["bias"].dtype)}}  # fmt: skip
