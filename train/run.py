"""A training run built once from its config: data, model, optimiser, schedule, workdir paths, mesh.

`build_run(config, workdir)` is the only place a config is turned into objects; `python -m train`,
`python -m train.evaluate` and `python -m train.save_model` all start from a `Run`. Its
`abstract_state` (shapes, dtypes and shardings from `jax.eval_shape`) is the target every restore
fills, so evaluating or resuming a run never reads the weights it was started from
(`config.init_from`): only `initial_state`, for a run with no checkpoint, does.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

import flax_squeezenet
from train import checkpoints, input_pipeline, linear_probe, optim, parallel
from train import workdir as workdir_lib
from train.configs import validation
from train.data import photo_split as photo_split_lib
from train.state import TrainState, create_train_state, model_kwargs

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen, in steps."""

    num_train_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def scaled_epochs(config: ml_collections.ConfigDict, num_train_examples: int) -> float:
    """`config.num_epochs`, or with `config.images_budget` > 0 the budget spread over the train
    examples, clipped to [`min_epochs`, `max_epochs`]: about the same number of steps for any small
    dataset, at least `min_epochs` passes over a large one."""
    if config.images_budget <= 0:
        return config.num_epochs
    return min(config.max_epochs, max(config.min_epochs, config.images_budget / max(1, num_train_examples)))


def eval_period(config: ml_collections.ConfigDict, num_train_steps: int, steps_per_epoch: int) -> int:
    """Steps between evaluations: `eval_every_steps`, else `num_evals` spread over the run, else an epoch."""
    if config.eval_every_steps > 0:
        return config.eval_every_steps
    if config.get("num_evals", 0) > 0:
        return max(1, num_train_steps // config.num_evals)
    return steps_per_epoch


def make_schedule(config: ml_collections.ConfigDict, num_train_examples: int) -> Schedule:
    """The run's length and its log / eval / checkpoint periods (eval: once an epoch unless set)."""
    steps_per_epoch = max(1, num_train_examples // config.batch_size)
    if config.num_train_steps > 0:
        num_train_steps = int(config.num_train_steps)
    else:
        epochs = scaled_epochs(config, num_train_examples)
        num_train_steps = max(1, int(math.ceil(epochs * steps_per_epoch)))
    return Schedule(
        num_train_steps=num_train_steps,
        steps_per_epoch=steps_per_epoch,
        log_every=max(1, config.log_every_steps),
        eval_every=eval_period(config, num_train_steps, steps_per_epoch),
        checkpoint_every=max(1, config.checkpoint_every_steps),
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a training run is made of, built once by `build_run`."""

    config: ml_collections.ConfigDict
    paths: workdir_lib.Paths
    data: input_pipeline.Data
    model: flax_squeezenet.SqueezeNet
    model_kwargs: dict[str, Any]
    schedule: Schedule
    learning_rate_fn: optax.Schedule
    optimizer: optax.GradientTransformation
    mesh: Mesh
    abstract_state: TrainState
    photo_split: photo_split_lib.PhotoSplit | None  # config.photos: the train / held-out photos (split.json)


def build_run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Run:
    """The run `config` describes in `workdir`; validates the config first and writes nothing.

    Initialises multi-process JAX first when `config.distributed` is set. Raises ValueError naming
    the key for a bad config.
    """
    validation.validate(config)
    paths = workdir_lib.Paths.of(workdir, config)
    if config.init_from and not workdir_lib.has_checkpoints(paths):
        # Only a run's step 0 reads init_from: a wrong one fails before the data is read
        # (test_missing_init_from_fails_before_the_data_is_read).
        flax_squeezenet.weights.pretrained.check_source(config.init_from)
    parallel.maybe_initialize_distributed(config)
    mesh = parallel.create_mesh()
    parallel.check_batch_size(config.batch_size, mesh.size, "batch_size")
    parallel.check_batch_size(config.eval_batch_size or config.batch_size, mesh.size, "eval_batch_size")
    split = None
    if config.photos:
        split = photo_split_lib.split_for_workdir(config.photos, config.holdout_fraction, paths.root)
    data = input_pipeline.open_data(config, split)
    schedule = make_schedule(config, data.info.num_train_examples)
    kwargs = model_kwargs(config, data.info.num_classes, data.info.image_shape[-1])
    model = flax_squeezenet.create_model(config.model, **kwargs)
    learning_rate_fn = optim.create_learning_rate_schedule(config, schedule.num_train_steps)
    optimizer = optim.create_optimizer(config, learning_rate_fn, schedule.num_train_steps)
    shapes = jax.eval_shape(functools.partial(create_train_state, model, optimizer, data.info.image_shape, config.seed))
    return Run(
        config=config,
        paths=paths,
        data=data,
        model=model,
        model_kwargs=kwargs,
        schedule=schedule,
        learning_rate_fn=learning_rate_fn,
        optimizer=optimizer,
        mesh=mesh,
        abstract_state=checkpoints.abstract_like(shapes, parallel.replicated_sharding(mesh)),
        photo_split=split,
    )


def pretrained_params(run: Run) -> Any:
    """`config.init_from`'s backbone with a fresh classifier for this run's classes."""
    config = run.config
    kwargs = dict(run.model_kwargs)
    num_classes = kwargs.pop("num_classes")
    _, variables = flax_squeezenet.load_pretrained(
        config.init_from, model=config.model, num_classes=num_classes,
        rng=jax.random.fold_in(jax.random.key(config.seed), 1), **kwargs,
    )  # fmt: skip
    logger.info("initialised from %s, with a %d-class classifier", config.init_from, num_classes)
    return variables["params"]


def initial_state(run: Run) -> TrainState:
    """The step-0 state replicated over the mesh: `init_from`'s weights if set (with config key
    `classifier_init` "linear_probe", its classifier fitted by `linear_probe.probe_classifier`), else
    the model's init."""
    params = pretrained_params(run) if run.config.init_from else None
    if run.config.classifier_init == "linear_probe":
        if params is None:
            raise ValueError("config key classifier_init 'linear_probe' fits the classifier on pretrained features: "
                             "set init_from")  # fmt: skip
        params = linear_probe.probe_classifier(run, params)
    state = create_train_state(run.model, run.optimizer, run.data.info.image_shape, run.config.seed, params)
    return parallel.replicate(state, run.mesh)


def restore_state(run: Run, step: str | int) -> tuple[TrainState, int]:
    """The state saved at `step` ("best", "latest" or a number) in the run's workdir, and that step."""
    manager = checkpoints.create_checkpoint_manager(run.paths.checkpoints, keep=run.config.keep_checkpoints, read_only=True)
    try:
        chosen = checkpoints.choose_step(manager, step)
        return checkpoints.restore_or_explain(manager, chosen, run.abstract_state), chosen
    finally:
        manager.close()
