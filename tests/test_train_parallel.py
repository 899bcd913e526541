"""The train step computes the same numbers on 1 device, on a mesh of 8 and under pmap over 8.

One subprocess with 8 fake CPU devices (XLA_FLAGS must be set before JAX starts) runs a few steps
of each variant from the same initial state on the same batches.
"""

import json

import pytest
from train_helpers import run_python

PARITY_SCRIPT = r"""
import dataclasses, functools, json, sys, tempfile
import jax, numpy as np
sys.path.insert(0, "tests")
from train import input_pipeline, parallel, run as run_lib, steps
from train_helpers import tiny_config

assert jax.device_count() == 8, jax.devices()

def run(config, mode, devices, batches):
    built = run_lib.build_run(config, tempfile.mkdtemp())
    mesh = parallel.create_mesh(devices)
    built = dataclasses.replace(built, mesh=mesh)
    state = run_lib.initial_state(built)
    initial = jax.tree.leaves(jax.tree.map(np.asarray, state.params))
    step_fn = functools.partial(steps.train_step, learning_rate_fn=built.learning_rate_fn)
    runner = parallel.compile_train_step(step_fn, mesh, mode)
    state = runner.to_run_layout(state)
    losses = []
    for batch in batches:
        state, metrics = runner.step(state, batch)
        losses.append(float(metrics["loss"]))
    state = runner.to_canonical(state)
    params = jax.tree.leaves(jax.tree.map(np.asarray, state.params))
    return losses, params, initial

def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))

result = {}
for name, config, modes in [
    ("float32", tiny_config(batch_size=16, num_train_steps=3), ("jit", "pmap")),
    ("bfloat16_dropout", tiny_config(batch_size=16, num_train_steps=3, dtype="bfloat16", dropout_rate=0.5), ("jit",)),
]:
    iterator = input_pipeline.create_train_iterator(config)
    batches = [next(iterator) for _ in range(3)]
    losses, params, initial = run(config, "jit", jax.devices()[:1], batches)
    result[name] = {"losses_1": losses, "param_change": max_diff(params, initial)}
    for mode in modes:
        losses, other, _ = run(config, mode, jax.devices(), batches)
        result[name]["losses_" + mode] = losses
        result[name]["param_diff_" + mode] = max_diff(params, other)
print("RESULT" + json.dumps(result))
"""


@pytest.fixture(scope="module")
def parity():
    process = run_python(PARITY_SCRIPT, num_devices=8)
    assert process.returncode == 0, process.stderr[-3000:]
    line = [line for line in process.stdout.splitlines() if line.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_8_devices_match_one_device(parity, mode):
    """jit over a mesh of 8 and pmap over 8 give the 1-device losses and parameters (float32, no dropout)."""
    result = parity["float32"]
    assert result[f"losses_{mode}"] == pytest.approx(result["losses_1"], rel=1e-5, abs=1e-6)
    assert result[f"param_diff_{mode}"] < 1e-5
    assert result["param_change"] > 1e-4  # the steps did train


@pytest.mark.slow
def test_8_devices_match_one_device_with_dropout_and_bfloat16(parity):
    """Dropout keys depend on the step only, so sharding the batch over 8 devices keeps the masks."""
    result = parity["bfloat16_dropout"]
    assert result["losses_jit"] == pytest.approx(result["losses_1"], rel=2e-2)
    assert result["param_diff_jit"] < 1e-3
    assert result["param_change"] > 1e-4
