"""Orbax checkpoints of a training run in `workdir/checkpoints`: save, keep, resume, fall back.

Each checkpoint is a step directory with two items: "state" (the TrainState's arrays: params,
optimiser state, step, rng) and "data" (the grain iterator's position, one JSON file per process).
Orbax writes a step to a temporary directory and renames it once complete, so a run killed while
saving leaves no half-written step behind. Kept: the latest `keep` steps plus the best by eval
top-1 (steps saved with eval metrics). The directory may be a URL (`gs://bucket/run/checkpoints`),
which Orbax writes through `etils.epath` and TensorStore.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pathlib
import shutil
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from flax_squeezenet.storage import files

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
    return ocp.CheckpointManager(files.user_path(directory), options=options)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); the earlier ones are intact."""


def _first_line(error: BaseException, limit: int = 400) -> str:
    """`error` in one line of at most about `limit` characters, keeping its end (where Orbax puts the cause)."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= limit else f"{text[: limit // 3]} ... {text[-2 * limit // 3 :]}"


def check_free_space(directory: files.AnyPath, state: Any) -> None:
    """CheckpointWriteError, before writing, if `directory`'s file system has less room than `state`'s arrays take.

    A remote store reports no free space; its errors come from the write.
    """
    if files.is_remote(directory):
        return
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise CheckpointWriteError(
            f"not enough disk space for a checkpoint in {directory}: {needed / 2**20:.1f} MiB needed, "
            f"{free / 2**20:.1f} MiB free; free some space and run the same command to resume"
        )


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: Optional[grain.DatasetIterator] = None,
    eval_metrics: Optional[dict[str, float]] = None,
) -> None:
    """Start an asynchronous save of `state` (and the iterator's position) as step `step`.

    `eval_metrics` (with "eval_top1") makes the step a candidate for the best checkpoint. Raises
    CheckpointWriteError if there is no room for it, or if this or the previous save failed (its
    temporary directory is removed).
    """
    check_free_space(files.user_path(manager.directory), state)
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
        manager.save(step, args=ocp.args.Composite(**items), metrics=dict(eval_metrics or {}), force=True)
    except Exception as error:  # noqa: BLE001 - Orbax reports a failed write (its own or the async one before) as any type
        with contextlib.suppress(Exception):  # the failure is reported below; this only lets the writers stop
            manager.wait_until_finished()
        remove_partial_saves(manager.directory)
        raise CheckpointWriteError(f"writing a checkpoint in {manager.directory} failed ({_first_line(error)}); "
                                   "the earlier checkpoints are intact") from None  # fmt: skip


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


class CheckpointMismatchError(ValueError):
    """A readable checkpoint holds arrays of other shapes or dtypes than the run's state."""


class UnreadableCheckpointError(ValueError):
    """A checkpoint's files are missing or damaged."""


def _path_name(path: tuple) -> str:
    """A tree path as dotted names ("opt_state.1.0.count"), the same for a TrainState and Orbax's metadata tree."""
    parts = (getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in path)
    return ".".join(str(p) for p in parts)


def _saved_shapes(directory: files.AnyPath) -> dict[str, tuple]:
    """{name: (shape, dtype)} of the arrays saved in the state item `directory`; UnreadableCheckpointError if unreadable."""
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(directory).item_metadata
        leaves = jax.tree_util.tree_leaves_with_path(metadata)
        shapes = {_path_name(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}
        if not shapes:
            raise ValueError("no array metadata")
        return shapes
    except Exception as error:  # noqa: BLE001 - whatever Orbax raises on damaged files, the step is unreadable
        raise UnreadableCheckpointError(f"checkpoint {directory.parent} is unreadable ({_first_line(error)})") from None


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
    """CheckpointMismatchError naming the first differing array if step `step` does not fit `abstract_state`."""
    step_dir = files.user_path(manager.directory) / str(step)
    saved = _saved_shapes(step_dir / "state")
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state):
        expected = (tuple(leaf.shape), str(leaf.dtype))
        found = saved.get(_path_name(path))
        if found != expected:
            raise CheckpointMismatchError(
                f"checkpoint {step_dir} holds {_path_name(path)} as {found or 'nothing'}, expected {expected}: it "
                "was written by a run with another model, classes, channels or optimiser; use a new workdir"
            )


def restore_or_explain(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: Optional[grain.DatasetIterator] = None
) -> Any:
    """`restore`, after checking the step fits `abstract_state`; one-line errors for a mismatch or damage."""
    check_compatible(manager, step, abstract_state)
    try:
        return restore(manager, step, abstract_state, data_iterator)
    except Exception as error:  # noqa: BLE001 - the shapes fit, so a failure to read means damaged files
        step_dir = files.user_path(manager.directory) / str(step)
        raise UnreadableCheckpointError(f"checkpoint {step_dir} is unreadable ({_first_line(error)})") from None


def restore_latest_good(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    data_iterator: Optional[grain.DatasetIterator] = None,
) -> Optional[Any]:
    """The newest checkpoint that restores, or None if there is none.

    A step whose files are damaged (corrupt, truncated, missing metadata) is skipped with a warning
    and the one before it is tried. Skipped steps are moved to `<checkpoints>_unreadable/` (kept for
    inspection, out of the way of the resumed run's saves). A readable step that does not fit
    `abstract_state` raises CheckpointMismatchError and nothing is moved.
    """
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            return restore_or_explain(manager, step, abstract_state, data_iterator)
        except UnreadableCheckpointError as error:
            logger.warning("checkpoint at step %d cannot be restored (%s); falling back to the previous one", step, error)
            _set_aside(manager, step)
    return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    if jax.process_index() == 0:
        root = files.user_path(manager.directory)
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


PARTIAL_SAVE_MARK = ".orbax-checkpoint-tmp"


def remove_partial_saves(directory: str | os.PathLike) -> None:
    """Delete the temporary directories of saves that never completed (Orbax renames a complete one)."""
    if jax.process_index() == 0:
        for partial in files.user_path(directory).glob(f"*{PARTIAL_SAVE_MARK}*"):
            files.remove_tree(partial)


def finish(manager: ocp.CheckpointManager) -> None:
    """Wait for the pending save and close `manager`; CheckpointWriteError if it failed (leaving no temporary directory)."""
    try:
        manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001 - as in `save`
        raise CheckpointWriteError(f"writing a checkpoint in {manager.directory} failed ({_first_line(error)}); "
                                   "the earlier checkpoints are intact") from None  # fmt: skip
    finally:
        remove_partial_saves(manager.directory)
        manager.close()
