"""Stochastic weight averaging (Izmailov et al., 2018): the model a run ends with is the mean of its
parameters over the run's last steps, which often generalises better than the last step's parameters
(not on the CIFAR-10 model of BENCHMARKS.md, "weight averaging from the 24-epoch model").

`average_weights` wraps the run's whole optimiser, so the mean lives in the optimiser state: it is
checkpointed with the run, resumes exactly and is computed alike under jit and pmap. Evaluation and
the saved model read it through `model_params`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class WeightAverageState(NamedTuple):
    """The wrapped optimiser's state, the updates made so far, and the running mean of the parameters
    averaged so far (before the first of them: the current parameters)."""

    inner_state: optax.OptState
    step: jax.Array
    average: optax.Params


def average_weights(optimizer: optax.GradientTransformation, start_step: int, every: int = 1) -> optax.GradientTransformation:
    """`optimizer` that also keeps the mean of the parameters reached after updates `start_step + every`,
    `start_step + 2 * every`, ... (with a cyclic learning rate, `every` is the cycle: the mean of its ends)."""

    def init(params: optax.Params) -> WeightAverageState:
        return WeightAverageState(optimizer.init(params), jnp.zeros([], jnp.int32), params)

    def update(updates, state: WeightAverageState, params: optax.Params):
        updates, inner_state = optimizer.update(updates, state.inner_state, params)
        step = state.step + 1
        taken = jnp.maximum(step - start_step, 0) // every  # parameters in the mean after this update
        weight = 1.0 / jnp.maximum(taken, 1).astype(jnp.float32)
        new_params = optax.apply_updates(params, updates)

        def fold(mean, value):
            averaged = jnp.where((step - start_step) % every == 0, mean + (value - mean) * weight, mean)
            return jnp.where(taken > 0, averaged, value)

        average = jax.tree.map(fold, state.average, new_params)
        return updates, WeightAverageState(inner_state, step, average)

    return optax.GradientTransformation(init, update)


def model_params(state: Any) -> optax.Params:
    """The parameters a train state is evaluated and saved with: the running mean when the run
    averages weights (`config.average_from_step`), else its current parameters."""
    if isinstance(state.opt_state, WeightAverageState):
        return state.opt_state.average
    return state.params
