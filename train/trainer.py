"""The training loop: build the run from a config, resume it, train, evaluate, checkpoint, export.

`train_and_evaluate(config, workdir)` is the whole program; running it again on the same workdir
resumes from the newest readable checkpoint and, as the data order and the dropout keys depend
only on the seed and the step, ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import signal
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import flax_squeezenet
from flax_squeezenet.conventions import InputConvention
from train import checkpoints, input_pipeline, optim, parallel, reporting, steps
from train.state import TrainState, create_train_state, model_kwargs

logger = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN or infinite; nothing after the last good checkpoint was saved."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint of the step reached was saved."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                         "run the same command to resume")  # fmt: skip
        self.signum = signum
        self.step = step


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When things happen, in steps."""

    num_train_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def maybe_initialize_distributed(config) -> None:
    """`jax.distributed.initialize` when `config.distributed` is set (before any other JAX call).

    Unset coordinator_address / num_processes / process_id are left for JAX to detect from the
    cluster environment (SLURM, Cloud TPU, ...).
    """
    if config.distributed and not jax.distributed.is_initialized():
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )


def make_schedule(config, num_train_examples: int) -> Schedule:
    steps_per_epoch = max(1, num_train_examples // config.batch_size)
    if config.num_train_steps > 0:
        num_train_steps = int(config.num_train_steps)
    else:
        num_train_steps = max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))
    return Schedule(
        num_train_steps=num_train_steps,
        steps_per_epoch=steps_per_epoch,
        log_every=max(1, config.log_every_steps),
        eval_every=config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch,
        checkpoint_every=max(1, config.checkpoint_every_steps),
    )


def write_config(config, workdir: pathlib.Path) -> None:
    """The run's config as JSON in the workdir (what `train.evaluate` rebuilds the run from)."""
    if jax.process_index() == 0:
        tmp = workdir / (CONFIG_JSON + ".tmp")
        tmp.write_text(config.to_json_best_effort(indent=2) + "\n")
        tmp.replace(workdir / CONFIG_JSON)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was started with."""
    path = pathlib.Path(workdir) / CONFIG_JSON
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training workdir (run python -m train first)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_saved_state(config, workdir: str | os.PathLike, step: str, mesh) -> tuple[TrainState, int]:
    """The train state saved at `step` ("best", "latest" or a number) in `workdir`, and that step."""
    info = input_pipeline.dataset_info(config)
    num_train_steps = make_schedule(config, info.num_train_examples).num_train_steps
    state, _ = build_state(config, info, num_train_steps, mesh)
    manager = checkpoints.create_checkpoint_manager(
        pathlib.Path(workdir) / CHECKPOINT_DIR, keep=config.keep_checkpoints, read_only=True
    )
    try:
        chosen = checkpoints.choose_step(manager, step)
        abstract = checkpoints.abstract_like(state, parallel.replicated_sharding(mesh))
        return checkpoints.restore(manager, chosen, abstract), int(chosen)
    finally:
        manager.close()


def create_model(config, info: input_pipeline.DatasetInfo) -> flax_squeezenet.SqueezeNet:
    return flax_squeezenet.create_model(config.model, **model_kwargs(config, info.num_classes, info.image_shape[-1]))


def initial_params(config, model: flax_squeezenet.SqueezeNet, info: input_pipeline.DatasetInfo) -> Optional[Any]:
    """Parameters to start from: `config.init_from`'s backbone with a fresh head, or None."""
    if not config.init_from:
        return None
    kwargs = model_kwargs(config, info.num_classes, info.image_shape[-1])
    num_classes = kwargs.pop("num_classes")
    _, variables = flax_squeezenet.load_pretrained(
        config.init_from, model=config.model, num_classes=num_classes,
        rng=jax.random.fold_in(jax.random.key(config.seed), 1), **kwargs,
    )  # fmt: skip
    logger.info("initialised from %s, with a %d-class classifier", config.init_from, num_classes)
    return variables["params"]


def build_state(config, info: input_pipeline.DatasetInfo, num_train_steps: int, mesh) -> tuple[TrainState, Any]:
    """The step-0 state replicated over `mesh`, and the learning-rate schedule."""
    model = create_model(config, info)
    learning_rate_fn = optim.create_learning_rate_schedule(config, num_train_steps)
    tx = optim.create_optimizer(config, learning_rate_fn)
    state = create_train_state(model, tx, info.image_shape, config.seed, initial_params(config, model, info))
    return parallel.replicate(state, mesh), learning_rate_fn


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def evaluate(state: TrainState, config, mesh, eval_step) -> dict[str, float]:
    """Mean loss, top-1 and top-5 of `state` over the eval split (all processes' shares)."""
    totals: dict[str, float] = {}
    for batch in input_pipeline.create_eval_batches(
        config, process_index=jax.process_index(), process_count=jax.process_count()
    ):
        sums = jax.device_get(eval_step(state, parallel.make_global_batch(batch, mesh)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    return {k: v / count for k, v in totals.items()}


class _StopSignal:
    """Records SIGTERM/SIGINT so the loop can save and stop between steps; a second SIGINT kills."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self.signum is not None
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        if self.signum is None and np.any(flags):
            self.signum = int(np.max(flags))
        return self.signum is not None

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


def _mean_metrics(pending: list[dict[str, jax.Array]]) -> tuple[dict[str, float], list[float]]:
    fetched = jax.device_get(pending)
    losses = [float(m["loss"]) for m in fetched]
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    means["learning_rate"] = float(fetched[-1]["learning_rate"])
    return means, losses


def export(state: TrainState, config, info: input_pipeline.DatasetInfo, directory: str | os.PathLike) -> pathlib.Path:
    """Write the trained parameters where `flax_squeezenet.load_pretrained(directory)` reads them."""
    params = jax.tree.map(np.asarray, state.params)
    p = input_pipeline.get_data_config(config).preprocessing
    # The evaluation transform travels with the weights (tests/test_conventions.py).
    convention = InputConvention(p.mean, p.std, round(p.image_size / p.eval_crop_fraction), p.image_size,
                                 "L" if p.channels == 1 else "RGB")  # fmt: skip
    return flax_squeezenet.save_pretrained(
        directory, {"params": params}, model=config.model, preprocessing=convention,
        class_names=list(info.class_names), **model_kwargs(config, info.num_classes, info.image_shape[-1]),
    )  # fmt: skip


def train_and_evaluate(config, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train `config` in `workdir` to `num_train_steps` (resuming if checkpoints exist), then export.

    Returns {"step", "train": last logged train metrics, "eval": last eval metrics, "export": path
    (None in multi-process runs: export with `python -m train.export` afterwards)}.
    Raises NonFiniteLossError on a NaN/inf loss (no checkpoint of the broken state is written) and
    TrainingInterrupted after saving a checkpoint on SIGTERM/SIGINT.
    """
    maybe_initialize_distributed(config)
    workdir = pathlib.Path(workdir).absolute()
    is_main = jax.process_index() == 0
    if config.parallel not in parallel.PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {parallel.PARALLEL_MODES}, got {config.parallel!r}")
    mesh = parallel.create_mesh()
    parallel.check_batch_size(config.batch_size, mesh.size, "batch_size")
    parallel.check_batch_size(config.eval_batch_size or config.batch_size, mesh.size, "eval_batch_size")
    info = input_pipeline.dataset_info(config)
    schedule = make_schedule(config, info.num_train_examples)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(config, workdir)
    logger.info("%s: %d classes, %d train / %d eval examples, input %s; %d steps (%d per epoch) on %d devices",
                config.dataset, info.num_classes, info.num_train_examples, info.num_eval_examples,
                info.image_shape, schedule.num_train_steps, schedule.steps_per_epoch, mesh.size)  # fmt: skip

    state, learning_rate_fn = build_state(config, info, schedule.num_train_steps, mesh)
    logger.info("%s: %d parameters", config.model, flax_squeezenet.count_params(state.params))
    manager = checkpoints.create_checkpoint_manager(workdir / CHECKPOINT_DIR, keep=config.keep_checkpoints)
    train_iter = input_pipeline.create_train_iterator(
        config, process_index=jax.process_index(), process_count=jax.process_count()
    )
    restored = checkpoints.restore_latest_good(
        manager, checkpoints.abstract_like(state, parallel.replicated_sharding(mesh)), train_iter
    )
    if restored is not None:
        state = restored
        logger.info("resumed from the checkpoint at step %d", int(state.step))
    initial_step = int(state.step)

    step_fn = functools.partial(steps.train_step, learning_rate_fn=learning_rate_fn, label_smoothing=config.label_smoothing)
    xla_options = flax_squeezenet.compiler_options(config.dtype)
    eval_step = parallel.jit_eval_step(steps.eval_step, mesh, xla_options)
    if config.parallel == "pmap":
        pmap_step = parallel.pmap_train_step(step_fn)
        run_state = parallel.to_pmap_layout(state)

        def train_step(run_state, batch):
            run_state, metrics = pmap_step(run_state, parallel.split_for_pmap(batch))
            return run_state, jax.tree.map(lambda x: x[0], metrics)

        def canonical(run_state):
            return parallel.from_pmap_layout(run_state, mesh)
    else:
        jit_step = parallel.jit_train_step(step_fn, mesh, xla_options)
        run_state = state

        def train_step(run_state, batch):
            return jit_step(run_state, parallel.make_global_batch(batch, mesh))

        def canonical(run_state):
            return run_state
    del state

    writer = reporting.MetricWriter(workdir, enabled=is_main, resume_step=initial_step)
    if config.measure_pipeline_throughput and initial_step < schedule.num_train_steps:
        pipeline_rate = input_pipeline.measure_throughput(config)
        logger.info("input pipeline alone: %.0f images/s (this process)", pipeline_rate)
        writer.write(initial_step, "pipeline", {"images_per_sec": pipeline_rate})

    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    last_saved = manager.latest_step()

    def save(step: int, state: TrainState, eval_metrics=None) -> None:
        nonlocal last_saved
        if not bool(_all_finite(state.params)):
            raise NonFiniteLossError(
                f"parameters are NaN/inf at step {step}; not saving. The last good checkpoint "
                f"(step {last_saved}) is kept; lower the learning rate or enable grad_clip_norm"
            )
        checkpoints.save(manager, step, state, train_iter,
                         None if eval_metrics is None else {f"eval_{k}": v for k, v in eval_metrics.items()})  # fmt: skip
        last_saved = step

    pending: list[dict[str, jax.Array]] = []
    progress = reporting.ProgressBar(schedule.num_train_steps, initial_step, enabled=is_main)
    window_start, window_steps = time.perf_counter(), 0

    def flush(step: int) -> None:
        """Fetch the metrics of the steps since the last flush, check them, log their mean."""
        nonlocal pending, window_start, window_steps, last_train
        if not pending:
            return
        means, losses = _mean_metrics(pending)
        first_step = step - len(pending) + 1
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss} at step {first_step + offset}: stopping. Nothing after the last good "
                    f"checkpoint (step {last_saved}) was saved; lower the learning rate or set grad_clip_norm"
                )
        elapsed = time.perf_counter() - window_start
        means["images_per_sec"] = window_steps * config.batch_size / elapsed if elapsed > 0 else float("nan")
        writer.write(step, "train", means)
        progress.update(step, means)
        last_train = means
        pending = []
        window_start, window_steps = time.perf_counter(), 0

    step = initial_step
    try:
        with _StopSignal() as stop:
            while step < schedule.num_train_steps:
                run_state, metrics = train_step(run_state, next(train_iter))
                step += 1
                pending.append(metrics)
                window_steps += 1
                is_last = step == schedule.num_train_steps
                stopping = (jax.process_count() == 1 or step % schedule.log_every == 0) and stop.requested()
                if step % schedule.log_every == 0 or is_last or stopping:
                    flush(step)
                eval_metrics = None
                if step % schedule.eval_every == 0 or is_last:
                    flush(step)
                    eval_metrics = evaluate(canonical(run_state), config, mesh, eval_step)
                    writer.write(step, "eval", eval_metrics)
                    progress.write(f"step {step}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
                    last_eval = eval_metrics
                if step % schedule.checkpoint_every == 0 or eval_metrics is not None or stopping:
                    flush(step)
                    save(step, canonical(run_state), eval_metrics)
                if eval_metrics is not None or stopping:
                    window_start, window_steps = time.perf_counter(), 0
                if stopping:
                    manager.wait_until_finished()
                    raise TrainingInterrupted(stop.signum, step)
    finally:
        progress.close()
        manager.wait_until_finished()
        writer.close()

    final_state = canonical(run_state)
    manager.close()
    export_dir: Optional[pathlib.Path] = pathlib.Path(config.export_dir) if config.export_dir else workdir / EXPORT_DIR
    if jax.process_count() > 1:
        # save_pretrained writes from one process; in a multi-process run it would wait on the others.
        logger.warning("multi-process run: not exporting; run `python -m train.export --workdir %s` in one process", workdir)
        export_dir = None
    elif is_main:
        export(final_state, config, info, export_dir)
        logger.info("exported to %s", export_dir)
    if is_main:
        reporting.plot_curves(workdir)
        logger.info("curves in %s", workdir / reporting.CURVES_PNG)
    return {"step": step, "train": last_train, "eval": last_eval, "export": None if export_dir is None else str(export_dir)}
