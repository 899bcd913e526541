"""The train step computes the same numbers on 1 device, on a mesh of 8 and under pmap over 8.

One subprocess with 8 fake CPU devices (XLA_FLAGS must be set before JAX starts) runs a few steps
of each variant from the same initial state on the same batches.
"""

import json

import pytest

from train_helpers import run_python

PARITY_SCRIPT = r"""
import functools, json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from train import input_pipeline, parallel, steps, trainer
from train_helpers import tiny_config

assert jax.device_count() == 8, jax.devices()

def run(config, mode, devices, batches):
    info = input_pipeline.dataset_info(config)
    mesh = parallel.create_mesh(devices)
    state, lr = trainer.build_state(config, info, len(batches), mesh)
    initial = jax.tree.leaves(jax.tree.map(np.asarray, state.params))
    step_fn = functools.partial(steps.train_step, learning_rate_fn=lr)
    losses = []
    if mode == "pmap":
        state = parallel.to_pmap_layout(state)
        step = parallel.pmap_train_step(step_fn)
        for batch in batches:
            state, metrics = step(state, parallel.split_for_pmap(batch))
            losses.append(float(metrics["loss"][0]))
        state = parallel.from_pmap_layout(state, mesh)
    else:
        step = parallel.jit_train_step(step_fn, mesh)
        for batch in batches:
            state, metrics = step(state, parallel.make_global_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
    params = jax.tree.leaves(jax.tree.map(np.asarray, state.params))
    return losses, params, initial

def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))

result = {}
for name, config, modes in [
    ("float32", tiny_config(batch_size=16), ("jit", "pmap")),
    ("bfloat16_dropout", tiny_config(batch_size=16, dtype="bfloat16", dropout_rate=0.5), ("jit",)),
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
