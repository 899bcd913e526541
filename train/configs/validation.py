"""Checks of a whole training config, made before anything is built or written.

The data keys are checked where they are resolved (`train.input_pipeline.open_data`); this module
checks the rest: every key is one of `default.py`'s, of its type, and in its range or choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ml_collections

import flax_squeezenet
from flax_squeezenet.compression import pruning
from flax_squeezenet.weights.compressed import MAX_BITS
from train import optim, parallel
from train.configs import default

DTYPES = ("float32", "bfloat16")
SAVED_STEPS = ("last", "best")
CLASSIFIER_INITS = ("random", "linear_probe")


def _positive(value) -> bool:
    return math.isfinite(value) and value > 0


def _non_negative(value) -> bool:
    return math.isfinite(value) and value >= 0


def _fraction(value) -> bool:
    return math.isfinite(value) and 0 <= value < 1


def _density(value) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and 0 < value <= 1


RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "model": (lambda v: v in flax_squeezenet.MODELS, "one of " + ", ".join(flax_squeezenet.MODELS)),
    "dtype": (lambda v: v in DTYPES, "one of " + ", ".join(DTYPES)),
    "optimizer": (lambda v: v in optim.OPTIMIZERS, "one of " + ", ".join(optim.OPTIMIZERS)),
    "schedule": (lambda v: v in optim.SCHEDULES, "one of " + ", ".join(optim.SCHEDULES)),
    "parallel": (lambda v: v in parallel.PARALLEL_MODES, "one of " + ", ".join(parallel.PARALLEL_MODES)),
    "learning_rate": (_positive, "a finite number above 0"),
    "batch_size": (_positive, "an integer of at least 1"),
    "num_epochs": (_positive, "a finite number above 0"),
    "dropout_rate": (_fraction, "a number in [0, 1)"),
    "label_smoothing": (_fraction, "a number in [0, 1)"),
    "end_learning_rate_factor": (_non_negative, "a finite number of at least 0"),
    "weight_decay": (_non_negative, "a finite number of at least 0"),
    "momentum": (_fraction, "a number in [0, 1)"),
    "grad_clip_norm": (_non_negative, "a finite number of at least 0 (0: no clipping)"),
    "warmup_steps": (_non_negative, "an integer of at least 0"),
    "keep_checkpoints": (_positive, "an integer of at least 1"),
    "prune_density": (lambda v: v == optim.PAPER_DENSITIES or _density(v),
                      f"a number in (0, 1] or {optim.PAPER_DENSITIES!r}"),
    "prune_begin_step": (_non_negative, "an integer of at least 0"),
    "prune_end_step": (lambda v: v == -1 or _positive(v), "an integer of at least 1, or -1 (2/3 of the run)"),
    "prune_frequency": (_positive, "an integer of at least 1"),
    "average_from_step": (_non_negative, "an integer of at least 0 (None: no weight averaging)"),
    "average_every_steps": (_positive, "an integer of at least 1"),
    "cycle_steps": (_non_negative, "an integer of at least 0"),
    "holdout_fraction": (lambda v: 0 < v < 1, "a number in (0, 1), e.g. 0.2"),
    "images_budget": (_non_negative, "an integer of at least 0 (0: num_epochs as set)"),
    "min_epochs": (_positive, "a finite number above 0"),
    "max_epochs": (_positive, "a finite number above 0"),
    "classifier_only_fraction": (_fraction, "a number in [0, 1)"),
    "backbone_lr_factor": (_non_negative, "a finite number of at least 0"),
    "num_evals": (_non_negative, "an integer of at least 0 (0: once per epoch)"),
    "classifier_init": (lambda v: v in CLASSIFIER_INITS, "one of " + ", ".join(CLASSIFIER_INITS)),
    "saved_step": (lambda v: v in SAVED_STEPS, "one of " + ", ".join(SAVED_STEPS)),
}


def _sharing_problem(config: ml_collections.ConfigDict) -> str | None:
    """What is wrong with the weight-sharing keys (bits out of range, an override without share_bits)."""
    overrides = dict(config.get("share_layer_bits") or {})
    if config.get("share_bits") is None:
        return "config key share_layer_bits needs share_bits set" if overrides else None
    if config.get("average_from_step") is not None:  # the mean of the first steps would leave the shared values
        return "config keys share_bits and average_from_step cannot both be set: average weights before sharing them"
    if config.get("prune_density") is not None:  # pruning would zero single members of a cluster
        return (
            "config keys share_bits and prune_density cannot both be set: prune in one run, then share in "
            "a run started from its model (python -m train.compress runs both)"
        )
    for key, bits in [("share_bits", config.share_bits), *((f"share_layer_bits.{k}", v) for k, v in overrides.items())]:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            return f"config key {key} must be an integer from 1 to {MAX_BITS} (bits per shared weight), got {bits!r}"
    return None


def _type_error(key: str, value, expected: type) -> str | None:
    if value is None or expected is type(None):
        return None
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if expected is tuple and isinstance(value, list):  # a tuple read back from config.json
        return None
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return None
    return f"config key {key} must be {expected.__name__}, got {value!r}"


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the first unknown key, or key of the wrong type or out of range."""
    reference = default.get_config()
    for key in config:
        if key not in reference:
            raise ValueError(f"unknown config key {key!r}; the keys are those of train/configs/default.py")
        expected = type(reference[key]) if reference[key] is not None else reference.get_type(key)
        problem = _type_error(key, config[key], expected)
        if problem:
            raise ValueError(problem)
    for key, (check, expected) in RULES.items():
        value = config.get(key)
        if value is not None and not check(value):
            raise ValueError(f"config key {key} must be {expected}, got {value!r}")
    if config.get("schedule") == "cosine_restarts" and not config.get("cycle_steps"):
        raise ValueError("config key cycle_steps must be at least 1 with schedule 'cosine_restarts' (the cycle's length)")
    if config.get("images_budget") and config.min_epochs > config.max_epochs:
        raise ValueError(f"config key min_epochs ({config.min_epochs}) must be at most max_epochs ({config.max_epochs})")
    _validate_pruning(config)
    problem = _sharing_problem(config)
    if problem:
        raise ValueError(problem)


def _validate_pruning(config: ml_collections.ConfigDict) -> None:
    """The pruning keys that depend on each other: per-layer densities, and the schedule's order."""
    overrides = dict(config.get("prune_layer_densities") or {})
    if overrides and config.get("prune_density") is None:
        raise ValueError("config key prune_layer_densities needs prune_density (a number or 'paper'); it is None (off)")
    for layer, density in overrides.items():
        if layer not in pruning.CONV_LAYERS:
            raise ValueError(
                f"config key prune_layer_densities names no conv layer: {layer!r}; the layers are "
                + ", ".join(pruning.CONV_LAYERS)
            )
        if not _density(density):
            raise ValueError(f"config key prune_layer_densities.{layer} must be a number in (0, 1], got {density!r}")
    begin, end = config.get("prune_begin_step"), config.get("prune_end_step")
    if begin is not None and end not in (None, -1) and end <= begin:
        raise ValueError(f"config key prune_end_step must be after prune_begin_step ({begin}), got {end}")
