"""Optimisers and learning-rate schedules from optax, chosen by config keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from flax_squeezenet.compression import pruning
from flax_squeezenet.compression.trained_sharing import with_shared_weights
from train.averaging import average_weights

SCHEDULES = ("constant", "linear", "warmup_cosine", "cosine_restarts")
OPTIMIZERS = ("adam", "adamw", "sgd")
PAPER_DENSITIES = "paper"  # prune_density's name for pruning.PAPER_V1_0_DENSITIES


def restarting(schedule: optax.Schedule, cycle_steps: int) -> optax.Schedule:
    """`schedule` started again every `cycle_steps` steps."""
    return lambda step: schedule(step % cycle_steps)


def create_learning_rate_schedule(config, num_train_steps: int) -> optax.Schedule:
    """The learning rate at each step: `config.schedule` after `config.warmup_steps` of linear warmup.

    "constant" holds `learning_rate`; "linear" decays it linearly to
    `learning_rate * end_learning_rate_factor` at `num_train_steps` (the SqueezeNet paper's policy);
    "warmup_cosine" follows a cosine to that same end value; "cosine_restarts" (Loshchilov & Hutter's
    SGDR) repeats that cosine every `config.cycle_steps` steps.
    """
    if config.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {config.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    peak = config.learning_rate
    warmup = max(0, min(config.warmup_steps, num_train_steps - 1))
    end = peak * config.end_learning_rate_factor
    decay_steps = max(1, num_train_steps - warmup)
    if config.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif config.schedule == "linear":
        main = optax.linear_schedule(peak, end, decay_steps)
    elif config.schedule == "cosine_restarts":
        main = restarting(optax.cosine_decay_schedule(peak, config.cycle_steps, alpha=config.end_learning_rate_factor),
                          config.cycle_steps)  # fmt: skip
    else:
        main = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_learning_rate_factor)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def pruning_steps(config, num_train_steps: int) -> tuple[int, int]:
    """The steps pruning begins and reaches its target densities at (`prune_end_step` -1: 2/3 of the run).

    Raises ValueError unless begin < end < `num_train_steps`, so the run ends at the target densities.
    """
    begin = config.prune_begin_step
    end = config.prune_end_step if config.prune_end_step != -1 else 2 * num_train_steps // 3
    named = f"prune_end_step ({end}{', 2/3 of the run' if config.prune_end_step == -1 else ''})"
    if not begin < end < num_train_steps:
        raise ValueError(
            f"config keys prune_begin_step ({begin}) < {named} < num_train_steps ({num_train_steps}) "
            "must hold, so the run ends at the target densities"
        )
    return begin, end


def create_pruning(config, num_train_steps: int) -> optax.GradientTransformation:
    """`pruning.prune_by_magnitude` to `config.prune_density` ("paper": the v1.0 model's table) and
    `config.prune_layer_densities`, over `pruning_steps`, recomputing the masks every `prune_frequency` steps."""
    density = None if config.prune_density == PAPER_DENSITIES else float(config.prune_density)
    begin, end = pruning_steps(config, num_train_steps)
    overrides = {layer: float(value) for layer, value in config.prune_layer_densities.items()}
    return pruning.prune_by_magnitude(
        density, overrides, begin_step=begin, end_step=end, frequency=config.prune_frequency
    )


def averaging_start(config, num_train_steps: int) -> int:
    """The step weight averaging starts after (`config.average_from_step`).

    Raises ValueError unless the run reaches the first step averaged and, with pruning on, averaging
    starts once pruning reaches its target densities (an earlier mean would bring pruned weights back).
    """
    start = config.average_from_step
    if start + config.average_every_steps > num_train_steps:
        raise ValueError(f"config keys average_from_step ({start}) + average_every_steps ({config.average_every_steps}) "
                         f"must be at most num_train_steps ({num_train_steps}), so the run reaches a step to average")  # fmt: skip
    if config.prune_density is not None:
        end = pruning_steps(config, num_train_steps)[1]
        if start < end:
            raise ValueError(f"config key average_from_step ({start}) must be at least the step pruning ends at "
                             f"({end}), so pruned weights stay zero in the mean")  # fmt: skip
    return start


CLASSIFIER = "classifier"  # the top-level parameter collection of the final 1x1 conv (flax_squeezenet.models)


def train_classifier_first(classifier_only_steps: int, backbone_factor: float) -> optax.GradientTransformation:
    """Updates of every parameter outside `CLASSIFIER` set to zero for the first `classifier_only_steps`
    steps, then scaled by `backbone_factor` (fine-tuning: a fresh classifier first learns on the
    pretrained features, then every layer adapts, the pretrained ones at a lower rate)."""

    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        factor = jnp.where(state.count < classifier_only_steps, 0.0, backbone_factor)
        scaled = {name: (tree if name == CLASSIFIER else jax.tree.map(lambda u: u * factor.astype(u.dtype), tree))
                  for name, tree in updates.items()}  # fmt: skip
        return scaled, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def create_optimizer(config, learning_rate: optax.Schedule, num_train_steps: int) -> optax.GradientTransformation:
    """`config.optimizer` with optional global-norm clipping (`config.grad_clip_norm` > 0), the
    classifier trained first (`train_classifier_first`: `classifier_only_fraction`, `backbone_lr_factor`),
    magnitude pruning (`config.prune_density` set) chained last so pruned weights stay exactly zero,
    and training shared weights when `config.share_bits` is set (`with_shared_weights`), keeping the
    mean of the parameters when `config.average_from_step` is set (`average_weights`).

    "adamw" decays weights decoupled from the gradient; "adam" and "sgd" (with `config.momentum`)
    add `weight_decay * params` to the gradient (L2), as the paper's Caffe solver did.
    """
    if config.optimizer == "adamw":
        optimizer = optax.adamw(learning_rate, weight_decay=config.weight_decay)
    elif config.optimizer in ("adam", "sgd"):
        base = optax.adam(learning_rate) if config.optimizer == "adam" else optax.sgd(learning_rate, momentum=config.momentum)
        optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay), base)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    classifier_only_steps = int(config.get("classifier_only_fraction", 0.0) * num_train_steps)
    if classifier_only_steps or config.get("backbone_lr_factor", 1.0) != 1.0:
        optimizer = optax.chain(optimizer, train_classifier_first(classifier_only_steps, config.backbone_lr_factor))
    if config.prune_density is not None:
        optimizer = optax.chain(optimizer, create_pruning(config, num_train_steps))
    if config.get("share_bits") is not None:  # wraps the whole chain: it sees the summed gradients
        optimizer = with_shared_weights(optimizer, config.share_bits, dict(config.share_layer_bits))
    if config.get("average_from_step") is not None:  # wraps the whole chain: it sees the final parameters
        optimizer = average_weights(optimizer, averaging_start(config, num_train_steps), config.average_every_steps)
    return optimizer
