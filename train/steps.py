"""The pure train and eval steps; `train.parallel` compiles them for a device mesh or pmap."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from train.state import TrainState

Metrics = dict[str, jax.Array]


def dropout_key(state: TrainState) -> jax.Array:
    """The dropout key of the step `state.step`: the run's rng folded with the step number."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example softmax cross-entropy against one-hot labels smoothed by `label_smoothing`."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def correct_in_top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k highest logits, else 0.0 (per example)."""
    top_k = jax.lax.top_k(logits, k)[1]
    return jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)


def classification_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example top-1 (and top-5 when there are at least 5 classes) correctness."""
    metrics = {"top1": correct_in_top_k(logits, labels, 1)}
    if logits.shape[-1] >= 5:
        metrics["top5"] = correct_in_top_k(logits, labels, 5)
    return metrics


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    learning_rate_fn: optax.Schedule,
    label_smoothing: float = 0.0,
    axis_name: Optional[str] = None,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on `batch`; returns the new state and the batch's mean metrics.

    Metrics: loss, top1, top5 (with >= 5 classes), learning_rate (the rate this step used),
    grad_norm. Under pmap, `axis_name` names the device axis: gradients and metrics are averaged
    over it (and each device folds its index into the dropout key).
    """
    key = dropout_key(state)
    if axis_name is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        logits = state.apply_fn({"params": params}, batch["image"], train=True, rngs={"dropout": key})
        loss = cross_entropy_loss(logits, batch["label"], label_smoothing).mean()
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, **{k: v.mean() for k, v in classification_metrics(logits, batch["label"]).items()}}
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = learning_rate_fn(state.step)
    return state.apply_gradients(grads=grads), metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> Metrics:
    """Sums over the real (mask true) examples of `batch`: count, loss, top1, top5 correct."""
    logits = state.apply_fn({"params": state.params}, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    per_example = {"loss": cross_entropy_loss(logits, batch["label"], 0.0),
                   **classification_metrics(logits, batch["label"])}  # fmt: skip
    sums = {k: jnp.sum(v * mask) for k, v in per_example.items()}
    sums["count"] = jnp.sum(mask)
    return sums
