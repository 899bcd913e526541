"""The training loop over a `train.run.Run`: resume or start, train, evaluate, checkpoint, save the model.

`train_and_evaluate(run)` is the whole program; running it again on the same workdir resumes from
the newest readable checkpoint and, as the data order and the dropout keys depend only on the seed
and the step, ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import flax_squeezenet
from train import checkpoints, input_pipeline, parallel, reporting, steps
from train import workdir as workdir_lib
from train.data import photo_split
from train.evaluate import evaluate, predict
from train.run import Run, Schedule, initial_state, restore_state
from train.save_model import save_model
from train.signals import StopSignal, TrainingInterrupted
from train.state import TrainState

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or the parameters became NaN or infinite; nothing after the last good checkpoint was saved."""


def _nothing_after(last_saved: Optional[int]) -> str:
    if last_saved is None:
        return "No checkpoint had been saved yet"
    return f"Nothing after the last good checkpoint (step {last_saved}) was saved"


@dataclasses.dataclass(frozen=True)
class MetricsWindow:
    """The metrics of the steps not yet logged, and when the window opened (for images/s)."""

    metrics: tuple[dict[str, jax.Array], ...] = ()
    opened_at: float = dataclasses.field(default_factory=time.perf_counter)

    def add(self, metrics: dict[str, jax.Array]) -> "MetricsWindow":
        return dataclasses.replace(self, metrics=self.metrics + (metrics,))


def summarize(window: MetricsWindow, step: int, batch_size: int, last_saved: Optional[int]) -> dict[str, float]:
    """The window's mean metrics (last learning rate, images/s); NonFiniteLossError naming the step of a NaN/inf loss."""
    fetched = jax.device_get(list(window.metrics))
    first_step = step - len(fetched) + 1
    for offset, metrics in enumerate(fetched):
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss} at step {first_step + offset}: stopping. "
                                     f"{_nothing_after(last_saved)}; lower the learning rate or set grad_clip_norm")  # fmt: skip
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    means["learning_rate"] = float(fetched[-1]["learning_rate"])
    elapsed = time.perf_counter() - window.opened_at
    means["images_per_sec"] = len(fetched) * batch_size / elapsed if elapsed > 0 else float("nan")
    return means


@dataclasses.dataclass(frozen=True)
class Due:
    """What a step ends with: logging the metrics window, an eval, a checkpoint (each implies the first)."""

    log: bool
    eval: bool
    checkpoint: bool


def due_at(step: int, schedule: Schedule, stopping: bool) -> Due:
    """What step `step` ends with; the last step evaluates, a stop saves, every eval is checkpointed."""
    is_last = step == schedule.num_train_steps
    evaluate_now = step % schedule.eval_every == 0 or is_last
    checkpoint = step % schedule.checkpoint_every == 0 or evaluate_now or stopping
    return Due(log=step % schedule.log_every == 0 or is_last or checkpoint, eval=evaluate_now, checkpoint=checkpoint)


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, state: TrainState, train_iter,
                    eval_metrics: Optional[dict[str, float]], last_saved: Optional[int]) -> int:  # fmt: skip
    """Start saving `state` as step `step` and return `step`; NonFiniteLossError (nothing saved) if it holds NaN/inf."""
    if not bool(_all_finite(state.params)):
        raise NonFiniteLossError(f"parameters are NaN/inf at step {step}; not saving. {_nothing_after(last_saved)}; "
                                 "lower the learning rate or enable grad_clip_norm")  # fmt: skip
    metrics = None if eval_metrics is None else {f"eval_{k}": v for k, v in eval_metrics.items()}
    checkpoints.save(manager, step, state, train_iter, metrics)
    return step


@dataclasses.dataclass(frozen=True)
class Session:
    """What the loop works with besides the run: the compiled steps, the saver, the data, the outputs."""

    run: Run
    train_step: parallel.TrainStepRunner
    eval_step: Any
    manager: ocp.CheckpointManager
    train_iter: Any
    writer: reporting.MetricWriter
    progress: reporting.ProgressBar


def train_loop(session: Session, state: TrainState, stop: StopSignal) -> tuple[int, TrainState, dict, dict]:
    """Train from `state` to the run's last step; the step reached, the final state and the last train/eval metrics."""
    run, schedule = session.run, session.run.schedule
    step, run_state = int(state.step), session.train_step.to_run_layout(state)
    last_saved, window = session.manager.latest_step(), MetricsWindow()
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    while step < schedule.num_train_steps:
        run_state, metrics = session.train_step.step(run_state, next(session.train_iter))
        step += 1
        window = window.add(metrics)
        stopping = stop.requested(step, schedule.log_every)
        due = due_at(step, schedule, stopping)
        if due.log:
            last_train = summarize(window, step, run.config.batch_size, last_saved)
            session.writer.write(step, "train", last_train)
            session.progress.update(step, last_train)
            window = MetricsWindow()
        eval_metrics = None
        if due.eval:
            eval_metrics = last_eval = evaluate(run, session.train_step.to_canonical(run_state), session.eval_step)
            session.writer.write(step, "eval", eval_metrics)
            session.progress.write(f"step {step}: eval " + ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
            window = MetricsWindow()
        if due.checkpoint:
            last_saved = save_checkpoint(session.manager, step, session.train_step.to_canonical(run_state),
                                         session.train_iter, eval_metrics, last_saved)  # fmt: skip
        if stopping:
            session.manager.wait_until_finished()
            raise TrainingInterrupted(stop.signum, step)
    return step, session.train_step.to_canonical(run_state), last_train, last_eval


def prepare_workdir(run: Run) -> None:
    """Check the config against the workdir's saved one, then write config.json (and, for config key
    `photos`, the run's split.json unless it is there); the workdir is locked."""
    workdir_lib.check_resumable(run.config, run.paths)
    run.paths.root.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        workdir_lib.write_config(run.config, run.paths.config_json)
        split_path = run.paths.root / photo_split.SPLIT_JSON
        if run.photo_split is not None and not split_path.exists():
            photo_split.write_split(run.photo_split, split_path)


def start_state(run: Run, manager: ocp.CheckpointManager, train_iter) -> TrainState:
    """The newest good checkpoint (positioning `train_iter`), else the step-0 state."""
    restored = checkpoints.restore_latest_good(manager, run.abstract_state, train_iter)
    if restored is None:
        return initial_state(run)
    logger.info("resumed from the checkpoint at step %d", int(restored.step))
    return restored


def train_and_evaluate(run: Run) -> dict[str, Any]:
    """Train `run` to its last step (resuming if checkpoints exist), then save the model.

    Returns {"step", "train": last logged train metrics, "eval": last eval metrics, "model": the
    saved model's directory (None in multi-process runs: save it with `python -m train.save_model`
    afterwards)}. Raises NonFiniteLossError on a NaN/inf loss (no checkpoint of the broken state is
    written) and TrainingInterrupted after saving a checkpoint on SIGTERM/SIGINT;
    `workdir.WorkdirInUseError`, before touching anything, while another process holds the workdir.
    """
    workdir_lib.check_writable(run.paths)
    workdir_lib.check_resumable(run.config, run.paths)  # before the lock too: a refused run touches nothing
    with workdir_lib.locked(run.paths.root, enabled=jax.process_index() == 0):
        return _train_in_locked_workdir(run)


def _train_in_locked_workdir(run: Run) -> dict[str, Any]:
    config, info, is_main = run.config, run.data.info, jax.process_index() == 0
    prepare_workdir(run)
    logger.info("%s: %d classes, %d train / %d eval examples, input %s; %d steps (%d per epoch) on %d devices",
                config.dataset, info.num_classes, info.num_train_examples, info.num_eval_examples, info.image_shape,
                run.schedule.num_train_steps, run.schedule.steps_per_epoch, run.mesh.size)  # fmt: skip
    manager = checkpoints.create_checkpoint_manager(run.paths.checkpoints, keep=config.keep_checkpoints)
    train_iter = input_pipeline.create_train_iterator(run.data, process_index=jax.process_index(),
                                                      process_count=jax.process_count())  # fmt: skip
    state = start_state(run, manager, train_iter)
    logger.info("%s: %d parameters", config.model, flax_squeezenet.count_params(state.params))
    xla_options = flax_squeezenet.compiler_options(config.dtype)
    step_fn = functools.partial(steps.train_step, learning_rate_fn=run.learning_rate_fn, label_smoothing=config.label_smoothing)
    writer = reporting.MetricWriter(run.paths.root, enabled=is_main, resume_step=int(state.step))
    if config.measure_pipeline_throughput and int(state.step) < run.schedule.num_train_steps:
        pipeline_rate = input_pipeline.measure_throughput(run.data)
        logger.info("input pipeline alone: %.0f images/s (this process)", pipeline_rate)
        writer.write(int(state.step), "pipeline", {"images_per_sec": pipeline_rate})
    session = Session(run, parallel.compile_train_step(step_fn, run.mesh, config.parallel, xla_options),
                      parallel.jit_eval_step(steps.eval_step, run.mesh, xla_options), manager, train_iter, writer,
                      reporting.ProgressBar(run.schedule.num_train_steps, int(state.step), enabled=is_main))  # fmt: skip
    try:
        with StopSignal() as stop:
            step, final_state, last_train, last_eval = train_loop(session, state, stop)
    finally:
        session.progress.close()
        checkpoints.finish(manager)
        writer.close()
    model_dir, report = finish_run(run, final_state)
    return {"step": step, "train": last_train, "eval": last_eval, "model": model_dir, "report": report}


def model_state(run: Run, final_state: TrainState) -> TrainState:
    """The state saved as the model: the final one, or with `saved_step` "best" the checkpoint of best eval top-1."""
    if run.config.saved_step != "best":
        return final_state
    state, step = restore_state(run, "best")
    logger.info("the model is the checkpoint of best eval top-1: step %d", step)
    return state


def report_of(run: Run, state: TrainState) -> dict[str, Any]:
    """`reporting.write_report` of `state`'s predictions on the eval split, into workdir/report."""
    labels, predicted = predict(run, state)
    dataset = run.data.dataset
    report = reporting.write_report(run.paths.root / reporting.REPORT_DIR, labels, predicted, dataset.class_names,
                                    lambda i: dataset.eval[i]["image"], dataset.eval_files)  # fmt: skip
    return {**report, "directory": str(run.paths.root / reporting.REPORT_DIR)}


def finish_run(run: Run, final_state: TrainState) -> tuple[Optional[str], Optional[dict[str, Any]]]:
    """Save the model (`model_state`), draw the curves and, with config key `report`, write the report
    (in process 0); the model's directory and the report (`report_of`), None where not written."""
    path, report = None, None
    if jax.process_count() > 1:
        # save_pretrained writes from one process; in a multi-process run it would wait on the others.
        logger.warning("multi-process run: not saving the model; run `python -m train.save_model --workdir %s` "
                       "in one process", run.paths.root)  # fmt: skip
    else:
        state = model_state(run, final_state)
        path = str(save_model(run, state, run.paths.model))
        logger.info("saved the trained model to %s", path)
        if run.config.report:
            report = report_of(run, state)
    if jax.process_index() == 0:
        reporting.plot_curves(run.paths.root)
        logger.info("curves in %s", run.paths.root / reporting.CURVES_PNG)
    return path, report
