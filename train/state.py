"""The train state: parameters, optimiser state, step and base rng in one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

import flax_squeezenet


class TrainState(train_state.TrainState):
    """flax's TrainState (step, params, opt_state, apply_fn, tx) plus the run's base rng.

    `rng` holds raw uint32 key data (checkpointable as a plain array); each step derives its
    dropout key from it with the step number (see `train.steps.dropout_key`).
    """

    rng: jax.Array = struct.field(default=None)


def model_kwargs(config, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The keyword arguments `flax_squeezenet.create_model` gets for `config` (also stored with the saved model)."""
    return {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "dropout_rate": config.dropout_rate,
        "dtype": compute_dtype(config),
    }


def compute_dtype(config) -> jnp.dtype:
    """The compute dtype named by `config.dtype` ("float32" or "bfloat16"); parameters stay float32."""
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    return jnp.dtype(config.dtype)


def create_train_state(
    model: flax_squeezenet.SqueezeNet,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
    seed: int,
    params: Any = None,
) -> TrainState:
    """A fresh state at step 0: `params` if given (fine-tuning), else the model's initialisation."""
    init_key, run_key = jax.random.split(jax.random.key(seed))
    if params is None:
        # Jitted: op by op, the initialisation would compile dozens of small programs one at a time.
        params = jax.jit(model.init)(init_key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, rng=jax.random.key_data(run_key)
    )
