"""Placing the train step on devices: `jax.jit` over a one-axis ("data") mesh, or `jax.pmap`.

The canonical layout of the train state is the mesh's: every array replicated over all devices of
all processes. Batches are sharded on "data": each process contributes its local slice of the
global batch, so the same code runs on one CPU, N devices and several hosts. The pmap variant
keeps a per-device copy of the state while it trains (`to_pmap_layout` / `from_pmap_layout`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
PMAP_AXIS = "batch"
PARALLEL_MODES = ("jit", "pmap")


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


def create_mesh(devices=None) -> Mesh:
    """A one-dimensional mesh named "data" over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the "data" axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, num_devices: int, key: str = "batch_size") -> None:
    """A clear error unless the global batch splits evenly over the devices."""
    if batch_size % num_devices:
        raise ValueError(
            f"{key} {batch_size} (global) is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices}, e.g. --config.{key}={max(1, batch_size // num_devices) * num_devices}"
        )


def make_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays sharded on "data" from this process's slice of the batch."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree`'s arrays (identical in every process) as arrays replicated over the whole mesh."""
    sharding = replicated_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)), tree)


def jit_train_step(step_fn: Callable, mesh: Mesh, compiler_options: dict[str, str] | None = None) -> Callable:
    """`step_fn(state, batch)` compiled for the mesh: state replicated and donated, batch on "data"."""
    replicated = replicated_sharding(mesh)
    return jax.jit(
        step_fn,
        in_shardings=(replicated, batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=compiler_options,
    )


def jit_eval_step(step_fn: Callable, mesh: Mesh, compiler_options: dict[str, str] | None = None) -> Callable:
    """`step_fn(state, batch)` compiled for the mesh (nothing donated); results replicated."""
    replicated = replicated_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(replicated, batch_sharding(mesh)), out_shardings=replicated,
                   compiler_options=compiler_options)  # fmt: skip


def pmap_train_step(step_fn: Callable) -> Callable:
    """`step_fn(state, batch, axis_name=...)` under pmap over this process's devices, state donated.

    Takes and returns the state in pmap layout and a batch of shape [local devices, per device, ...];
    metrics come back per device (identical after the pmean). `jax.pmap` takes no compiler
    options, so `flax_squeezenet.compiler_options` apply to the jit variant only.
    """
    return jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, donate_argnums=0)


def split_for_pmap(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's batch reshaped to [local devices, per device, ...]."""
    n = jax.local_device_count()
    return {k: np.asarray(v).reshape(n, -1, *np.shape(v)[1:]) for k, v in local_batch.items()}


def to_pmap_layout(state: Any) -> Any:
    """A copy of the state on each local device (the layout `pmap_train_step` takes), placed as
    pmap places its outputs, so that the step's second call reuses the first call's compile
    (tests/test_train_units.py::test_pmap_step_compiles_once)."""
    devices = jax.local_devices()
    sharding = NamedSharding(Mesh(np.asarray(devices), (PMAP_AXIS,)), PartitionSpec(PMAP_AXIS))
    return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), sharding),
                        state)  # fmt: skip


def from_pmap_layout(state: Any, mesh: Mesh) -> Any:
    """The state of local device 0, replicated over the mesh (the canonical layout)."""
    return replicate(jax.tree.map(lambda x: np.asarray(x[0]), state), mesh)


@dataclasses.dataclass(frozen=True)
class TrainStepRunner:
    """A compiled train step and the layout it keeps the state in while training.

    `step(state, local_batch)` returns the new state and the step's metrics (one value each);
    `to_run_layout` / `to_canonical` move the state between the mesh layout and the step's own
    (the same, under jit).
    """

    step: Callable[[Any, dict[str, np.ndarray]], tuple[Any, dict[str, jax.Array]]]
    to_run_layout: Callable[[Any], Any]
    to_canonical: Callable[[Any], Any]


def _identity(state: Any) -> Any:
    return state


def compile_train_step(step_fn: Callable, mesh: Mesh, mode: str, compiler_options: dict[str, str] | None = None) -> TrainStepRunner:
    """`step_fn(state, batch[, axis_name])` compiled with `jax.jit` over `mesh` or, for mode "pmap", with `jax.pmap`."""
    if mode == "pmap":
        pmap_step = pmap_train_step(step_fn)

        def step(state, local_batch):
            state, metrics = pmap_step(state, split_for_pmap(local_batch))
            return state, jax.tree.map(lambda x: x[0], metrics)

        return TrainStepRunner(step, to_pmap_layout, functools.partial(from_pmap_layout, mesh=mesh))
    jit_step = jit_train_step(step_fn, mesh, compiler_options)

    def step(state, local_batch):
        return jit_step(state, make_global_batch(local_batch, mesh))

    return TrainStepRunner(step, _identity, _identity)
