"""Orbax checkpoints of a training run in `workdir/checkpoints`: save, keep, resume, fall back.

Each checkpoint is a step directory with two items: "state" (the TrainState's arrays: params,
optimiser state, step, rng) and "data" (the grain iterator's position, one JSON file per process).
Orbax writes a step to a temporary directory and renames it once complete, so a run killed while
saving leaves no half-written step behind. Kept: the latest `keep` steps plus the best by eval
top-1 (steps saved with eval metrics).
"""

from __future__ import annotations

import logging
import math
import pathlib
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = "eval_top1"

logger = logging.getLogger(__name__)


def _best_metric(metrics: dict[str, Any]) -> float:
    """Eval top-1 of a step; steps saved without an eval rank below every evaluated step."""
    return float(metrics.get(BEST_METRIC, -math.inf))


def create_checkpoint_manager(directory: str | pathlib.Path, *, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager saving asynchronously to `directory`, keeping the last `keep` steps and the best."""
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=keep),
        checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        best_fn=_best_metric,
        best_mode="max",
        preservation_policy=policy,
        enable_async_checkpointing=True,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: Optional[grain.DatasetIterator] = None,
    eval_metrics: Optional[dict[str, float]] = None,
) -> None:
    """Start an asynchronous save of `state` (and the iterator's position) as step `step`.

    `eval_metrics` (with "eval_top1") makes the step a candidate for the best checkpoint.
    """
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    manager.save(step, args=ocp.args.Composite(**items), metrics=dict(eval_metrics or {}), force=True)


def restore(
    manager: ocp.CheckpointManager,
    step: int,
    abstract_state: Any,
    data_iterator: Optional[grain.DatasetIterator] = None,
) -> Any:
    """The state saved at `step`, laid out like `abstract_state`; sets `data_iterator`'s position."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_latest_good(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    data_iterator: Optional[grain.DatasetIterator] = None,
) -> Optional[Any]:
    """The newest checkpoint that restores, or None if there is none.

    A step that fails to restore (corrupt or truncated files) is skipped with a warning and the
    one before it is tried. Skipped steps are moved to `<checkpoints>_unreadable/` (kept for
    inspection, out of the way of the resumed run's saves).
    """
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return restore(manager, step, abstract_state, data_iterator)
        except Exception as error:  # noqa: BLE001 - any failure to read means "unusable checkpoint"
            logger.warning("checkpoint at step %d cannot be restored (%s: %s); falling back to the previous one",
                           step, type(error).__name__, error)  # fmt: skip
            _set_aside(manager, step)
    return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    if jax.process_index() == 0:
        root = pathlib.Path(manager.directory)
        aside = root.with_name(root.name + "_unreadable")
        aside.mkdir(exist_ok=True)
        (root / str(step)).rename(aside / str(step))
        logger.warning("moved the unreadable step %d to %s", step, aside / str(step))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    manager.reload()


def choose_step(manager: ocp.CheckpointManager, step: str | int) -> int:
    """The saved step named by `step`: "best" (by eval top-1; the latest if none has eval metrics),
    "latest", or a number; a clear error naming the saved steps otherwise."""
    available = sorted(manager.all_steps())
    if not available:
        raise FileNotFoundError(f"no checkpoints in {manager.directory}")
    if step == "best":
        return int(manager.best_step() or manager.latest_step())
    if step == "latest":
        return int(manager.latest_step())
    if str(step).isdigit() and int(step) in available:
        return int(step)
    raise ValueError(f"step must be 'best', 'latest' or one of the saved steps {available}, got {step!r}")


def abstract_like(state: Any, sharding: jax.sharding.Sharding) -> Any:
    """Shape/dtype/sharding placeholders of `state`'s arrays, the target a restore fills."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
