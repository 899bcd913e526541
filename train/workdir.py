"""A run's workdir: its layout, the config it was started with, and the checks made before writing to it.

Layout: `config.json` (the run's config), `checkpoints/`, `model/` (the trained model as a
`flax_squeezenet.save_pretrained` directory, unless `config.model_dir` names another), metrics and
curves (`train.reporting`).

Resuming: a workdir's saved config may differ from the new one only in `RESUMABLE_KEYS`: how long
to train, the learning rate and its schedule (lowering it after a NaN loss is the usual fix), how
often to log / evaluate / checkpoint, where the data, the saved model and the starting weights are
(`init_from` is read only at step 0), and how the data is read and the step run. Any other
difference (model, dataset, classes, channels, image size, augmentation, optimiser, weight decay,
dropout, dtype, seed, the `prune_*` keys that made the checkpoint's pruning masks, ...) changes what
the checkpoints hold or mean, so the run refuses to start, naming the keys, and touches nothing; a
checkpoint whose arrays do not fit the state is refused the same way
(`train.checkpoints.CheckpointMismatchError`). To start over with a new config, use a new workdir.

One run at a time: a run holds `run.lock` in its workdir (an OS lock, `locked`) from before it
reads the saved config until its model is saved; a second run (or `python -m train.save_model`)
in the same workdir is refused, naming the process that holds it, and touches nothing. The OS
releases the lock however the holder ends, SIGKILL included, so a killed run resumes.

The workdir and `model_dir` may be URLs `etils.epath` opens (`gs://bucket/run`): their paths are then
`epath.Path`s, and Orbax writes the checkpoints there directly (`flax_squeezenet.storage.files`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator

import ml_collections

from flax_squeezenet.storage import files

CONFIG_JSON = "config.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
LOCK_FILE = "run.lock"
PRETRAINED_METADATA = "metadata.json"  # what flax_squeezenet.save_pretrained writes in its directory

RESUMABLE_KEYS = frozenset({
    "num_epochs", "num_train_steps", "log_every_steps", "eval_every_steps", "num_evals", "checkpoint_every_steps",
    "learning_rate", "schedule", "warmup_steps", "cycle_steps", "end_learning_rate_factor", "grad_clip_norm",
    "keep_checkpoints", "measure_pipeline_throughput", "model_dir", "init_from", "classifier_init", "data_dir", "manual_dir",
    "train_folder", "eval_folder", "photos", "report", "saved_step", "images_budget", "min_epochs", "max_epochs", "eval_split", "eval_batch_size", "cache_images", "num_workers",
    "prefetch", "parallel", "distributed", "coordinator_address", "num_processes", "process_id",
})  # fmt: skip


class WorkdirInUseError(OSError):
    """Another process holds the workdir's lock: a run, or a save of its model, is under way in it."""


@contextlib.contextmanager
def locked(root: files.AnyPath, enabled: bool = True) -> Iterator[None]:
    """Hold the workdir `root` (created if absent) for this process while the block runs.

    WorkdirInUseError naming the holder (pid, host, start time, as written in `LOCK_FILE`) if
    another process holds it. The lock is the OS's (`flock`), so it ends with its process however
    that ends (tests/test_workdir_lock.py). Object stores have no locks: a remote workdir, or
    `enabled=False` (the processes of a multi-process run other than the first), is not locked.
    """
    if not enabled or files.is_remote(root):
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, files.FILE_MODE)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 1024, 0).decode(errors="replace").strip() or "another process"
            raise WorkdirInUseError(f"workdir {root} is in use by {holder}: wait until it ends, or use "
                                    "another --workdir") from None  # fmt: skip
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()} (started {started})\n".encode(), 0)
        yield
        os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # releases the lock


class ConfigMismatchError(ValueError):
    """The config differs from the one the workdir's run was started with in a key that may not change."""


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where a run keeps its files."""

    root: files.AnyPath
    config_json: files.AnyPath
    checkpoints: files.AnyPath
    model: files.AnyPath

    @classmethod
    def of(cls, workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> "Paths":
        root = files.user_path(workdir)
        model = files.user_path(config.model_dir) if config.model_dir else root / MODEL_DIR
        return cls(root=root, config_json=root / CONFIG_JSON, checkpoints=root / CHECKPOINT_DIR, model=model)


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config the run in `workdir` was started with; a one-line error if there is none or it is damaged."""
    path = files.user_path(workdir) / CONFIG_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a training workdir (run python -m train first)")
    try:
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as error:
        raise ValueError(f"{path} is not a config written by python -m train ({error})") from None


def write_config(config: ml_collections.ConfigDict, path: files.AnyPath) -> None:
    """Write `config` as JSON to `path`, whole or not at all, with the umask's mode (`files.atomic_file`)."""
    with files.atomic_file(path) as temporary:
        temporary.write_text(config.to_json_best_effort(indent=2) + "\n")


def changed_keys(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> list[str]:
    """The keys outside `RESUMABLE_KEYS` whose values differ between `saved` and `config` (as JSON)."""
    old, new = json.loads(saved.to_json_best_effort()), json.loads(config.to_json_best_effort())
    return sorted(k for k in old.keys() | new.keys() if k not in RESUMABLE_KEYS and old.get(k) != new.get(k))


def check_resumable(config: ml_collections.ConfigDict, paths: Paths) -> None:
    """Raise ConfigMismatchError naming the keys if `paths`' saved config differs from `config` in a fixed key."""
    if not paths.config_json.exists():
        return
    saved = read_config(paths.root)
    changed = changed_keys(saved, config)
    if changed:
        old, new = json.loads(saved.to_json_best_effort()), json.loads(config.to_json_best_effort())
        differences = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)  # one line, dicts too
        raise ConfigMismatchError(
            f"{paths.root} holds a run with another config ({differences}); these keys cannot change on "
            "resume: use a new --workdir, or the saved config.json's values"
        )


def has_checkpoints(paths: Paths) -> bool:
    """Whether the run in `paths` has saved anything in its checkpoint directory (so resumes, not starts)."""
    return paths.checkpoints.is_dir() and any(paths.checkpoints.iterdir())


def check_writable(paths: Paths) -> None:
    """One-line errors, before anything is written, for a workdir or model directory that cannot be used.

    A remote workdir's permissions are only known by writing: its errors come from the first write.
    """
    root = paths.root
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"workdir {root} is a file, expected a directory")
    if not files.is_remote(root):
        existing = next(p for p in (root, *root.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"workdir {root} cannot be written ({existing} is read-only)")
    check_model_dir(paths.model)


def check_model_dir(model: files.AnyPath) -> None:
    """A one-line error unless `model` is absent, empty or a saved model (which saving replaces)."""
    if model.exists() and not (model.is_dir() and (not any(model.iterdir()) or (model / PRETRAINED_METADATA).is_file())):
        raise FileExistsError(
            f"model directory {model} exists and is not a saved model (no {PRETRAINED_METADATA}); "
            "expected a new, empty or save_pretrained directory"
        )
