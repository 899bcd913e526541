"""Magnitude pruning in `python -m train` (issue #12, item 2): config keys, masks in the optimiser state.

A pruned run keeps every pruned weight exactly zero in its checkpoints and saved model, reaches
each layer's target density at `prune_end_step` (even when `prune_frequency` does not divide the
span), logs a `density` that follows the cubic schedule, trains the same under jit over a mesh
and under pmap, and resumes bitwise after SIGKILL with its masks restored from the checkpoint.
"""

import json
import re
import signal
import subprocess
import time

import flax.traverse_util
import jax
import numpy as np
import optax
import pytest
from train_helpers import REPO, run_python, subprocess_env, tiny_config, train_command, train_in_process

import flax_squeezenet
from flax_squeezenet.compression import pruning
from train import optim, run, workdir
from train.configs import validation

LAYER_OVERRIDES = {"classifier": 0.5}
# begin 1, frequency 3, end 8 (2/3 of 12): masks at steps 1, 4, 7 and, the span not being a multiple of 3, at 8.
CONFIG = tiny_config(prune_density=0.3, prune_layer_densities=LAYER_OVERRIDES, prune_begin_step=1, prune_frequency=3,
                     eval_every_steps=2)  # fmt: skip


def _pruning_states(opt_state) -> list[pruning.PruningState]:
    is_pruning = lambda s: isinstance(s, pruning.PruningState)  # noqa: E731
    return [s for s in jax.tree.leaves(opt_state, is_leaf=is_pruning) if is_pruning(s)]


def _pruning_state(opt_state) -> pruning.PruningState:
    (state,) = _pruning_states(opt_state)
    return state


def _kernels(params) -> dict[str, np.ndarray]:
    flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
    return {path[: -len("/kernel")]: np.asarray(leaf) for path, leaf in flat.items() if path.endswith("/kernel")}


def _target(layer: str) -> float:
    return LAYER_OVERRIDES.get(layer, CONFIG.prune_density)


def _expected_density(step: int, sizes: dict[str, int], begin: int, end: int, frequency: int) -> float:
    """The kernel density after `step` updates: the masks of the last step the schedule recomputed them."""
    recomputed = [c for c in range(begin, min(step - 1, end) + 1) if (c - begin) % frequency == 0 or c == end]
    if not recomputed:
        return 1.0
    kept = sum(round(float(pruning.cubic_density(recomputed[-1], _target(layer), begin, end)) * size)
               for layer, size in sizes.items())  # fmt: skip
    return kept / sum(sizes.values())


PARALLEL_SCRIPT = r"""
import json, pathlib, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from test_train_pruning import CONFIG, _kernels, _pruning_state
from train import run
from train_helpers import train_in_process

assert jax.device_count() == 2, jax.devices()
masks, params, result = {}, {}, {}
for mode in ("jit", "pmap"):
    config = CONFIG.copy_and_resolve_references()
    config.parallel = mode
    directory = pathlib.Path(ROOT) / mode
    evaluated = train_in_process(config, directory)["eval"]
    state, _ = run.restore_state(run.build_run(config, directory), "latest")
    masks[mode], params[mode] = _kernels(_pruning_state(state.opt_state).masks), _kernels(state.params)
    result[mode] = {k: {"kept": int(m.sum()), "size": m.size, "zero_outside": bool(np.all(params[mode][k][~m] == 0))}
                    for k, m in masks[mode].items()}
    result["eval_" + mode] = evaluated
# Reductions may round differently under jit and pmap: a weight at a layer's threshold may rank otherwise.
both = {k: masks["jit"][k] & masks["pmap"][k] for k in masks["jit"]}
result["masks_differ"] = sum(int(np.sum(masks["jit"][k] != masks["pmap"][k])) for k in both)
result["max_diff"] = max(float(np.max(np.abs(params["jit"][k] - params["pmap"][k])[both[k]])) for k in both)
print("RESULT" + json.dumps(result))
"""


@pytest.fixture(scope="module")
def parallel_runs(tmp_path_factory):
    """CONFIG trained on 2 devices under jit over a mesh and under pmap, in one subprocess: the
    directory holding the two workdirs ("jit", "pmap") and what the script found in them."""
    root = tmp_path_factory.mktemp("parallel")
    process = run_python(f"ROOT = {str(root)!r}\n" + PARALLEL_SCRIPT, num_devices=2, timeout=900)
    assert process.returncode == 0, process.stderr[-3000:]
    line = [line for line in process.stdout.splitlines() if line.startswith("RESULT")][-1]
    return root, json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def pruned_run(parallel_runs):
    """The jit run of `parallel_runs`: its workdir, final eval metrics and final state (restored here).
    CONFIG's own mode on a mesh of 2; a run of its own on 1 device would compile a third train step
    (a 1-device pruned run is SIGKILLed and resumed below)."""
    root, result = parallel_runs
    directory = root / "jit"
    state, _ = run.restore_state(run.build_run(CONFIG, directory), "latest")
    return directory, {"eval": result["eval_jit"]}, state


@pytest.mark.slow
def test_pruned_weights_are_zero_in_the_final_state_and_the_saved_model(pruned_run):
    directory, result, state = pruned_run
    assert int(state.step) == CONFIG.num_train_steps
    masks = _kernels(_pruning_state(state.opt_state).masks)
    params = _kernels(state.params)
    _, saved = flax_squeezenet.load_pretrained(directory / "model")
    model = _kernels(saved["params"])
    assert set(masks) == set(pruning.CONV_LAYERS)
    for layer, mask in masks.items():
        assert int(mask.sum()) == round(_target(layer) * mask.size), layer
        assert np.all(params[layer][~mask] == 0) and np.all(model[layer][~mask] == 0), layer
        np.testing.assert_array_equal(model[layer], params[layer], err_msg=layer)
    assert result["eval"]["density"] == pytest.approx(pruning.kernel_density(saved["params"]))


@pytest.mark.slow
def test_logged_density_follows_the_cubic_schedule(pruned_run):
    directory, _, state = pruned_run
    sizes = {layer: kernel.size for layer, kernel in _kernels(state.params).items()}
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    logged = {row["step"]: row["density"] for row in rows if row["split"] == "eval"}
    assert sorted(logged) == [2, 4, 6, 8, 10, 12]
    expected = {step: _expected_density(step, sizes, begin=1, end=8, frequency=3) for step in logged}
    assert logged == pytest.approx(expected, abs=1e-4)
    assert expected[4] > expected[6] > expected[8] > expected[10] == expected[12]  # the schedule was exercised


def test_pruning_is_chained_last_only_when_asked():
    params = {"conv1": {"kernel": np.ones((3, 3, 1, 4), np.float32), "bias": np.ones(4, np.float32)}}
    pruned = optim.create_optimizer(tiny_config(prune_density=0.5), optax.constant_schedule(1e-3), 12)
    state = pruned.init(params)
    assert isinstance(state[-1], pruning.PruningState)
    plain = optim.create_optimizer(tiny_config(), optax.constant_schedule(1e-3), 12)
    assert _pruning_states(plain.init(params)) == []
    assert optim.pruning_steps(tiny_config(prune_begin_step=2), 12) == (2, 8)
    assert optim.pruning_steps(tiny_config(prune_end_step=11), 12) == (0, 11)


@pytest.mark.parametrize("overrides, message", [
    ({"prune_density": 0.0}, "prune_density must be a number in (0, 1] or 'paper'"),
    ({"prune_density": 1.5}, "prune_density must be a number in (0, 1] or 'paper'"),
    ({"prune_density": "papers"}, "prune_density must be a number in (0, 1] or 'paper'"),
    ({"prune_density": 0.3, "prune_layer_densities": {"fire10/squeeze": 0.3}},
     "names no conv layer: 'fire10/squeeze'; the layers are classifier, conv1, fire2/expand1x1"),
    ({"prune_density": 0.3, "prune_layer_densities": {"classifier": 0.0}}, "prune_layer_densities.classifier must be"),
    ({"prune_layer_densities": {"classifier": 0.5}}, "prune_layer_densities needs prune_density"),
    ({"prune_density": 0.3, "prune_begin_step": 5, "prune_end_step": 5}, "prune_end_step must be after prune_begin"),
    ({"prune_density": 0.3, "prune_frequency": 0}, "prune_frequency must be an integer of at least 1"),
    ({"prune_density": 0.3, "prune_end_step": -2}, "prune_end_step must be an integer of at least 1, or -1"),
])  # fmt: skip
def test_bad_pruning_keys_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validation.validate(tiny_config(**overrides))


@pytest.mark.parametrize("overrides, message", [
    ({"prune_end_step": 12}, r"prune_begin_step \(0\) < prune_end_step \(12\) < num_train_steps \(12\)"),
    ({"prune_begin_step": 9}, r"prune_begin_step \(9\) < prune_end_step \(8, 2/3 of the run\) < num_train_steps"),
])  # fmt: skip
def test_a_schedule_that_would_not_end_pruned_is_refused_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_in_process(tiny_config(prune_density=0.3, **overrides), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_pruning_keys_cannot_change_on_resume(tmp_path):
    paths = workdir.Paths.of(tmp_path, CONFIG)
    workdir.write_config(CONFIG, paths.config_json)
    workdir.check_resumable(CONFIG.copy_and_resolve_references(), paths)
    changed = CONFIG.copy_and_resolve_references()
    changed.prune_density, changed.prune_layer_densities = 0.5, {"classifier": 0.2}
    expected = "(prune_density: 0.3 -> 0.5, prune_layer_densities: {'classifier': 0.5} -> {'classifier': 0.2})"
    with pytest.raises(workdir.ConfigMismatchError, match=re.escape(expected)):
        workdir.check_resumable(changed, paths)


@pytest.mark.slow
def test_jit_over_a_mesh_and_pmap_prune_alike(parallel_runs):
    _, result = parallel_runs
    for mode in ("jit", "pmap"):
        assert set(result[mode]) == set(pruning.CONV_LAYERS)
        for layer, found in result[mode].items():
            assert found["zero_outside"], (mode, layer)
            assert found["kept"] == round(_target(layer) * found["size"]), (mode, layer)
    assert result["masks_differ"] <= 4
    assert result["max_diff"] < 1e-4


# As tests/test_train_resume.py's run, shorter, with the masks recomputed before and after the kill.
KILLED_CONFIG = tiny_config(num_train_steps=30, checkpoint_every_steps=5, eval_every_steps=15, log_every_steps=5,
                            dropout_rate=0.5, augment="crop_flip", prune_density=0.3, prune_begin_step=2,
                            prune_frequency=4)  # fmt: skip
LAYER_FLAG = f"--config.prune_layer_densities={LAYER_OVERRIDES!r}"


def _saved_steps(directory):
    checkpoints = directory / "checkpoints"
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []


def _train(directory, kill_after_a_checkpoint: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m train` of KILLED_CONFIG with the layer overrides as a flag; SIGKILLed once a step > 0 is saved."""
    process = subprocess.Popen([*train_command(directory, KILLED_CONFIG), LAYER_FLAG], env=subprocess_env(), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while kill_after_a_checkpoint and not any(_saved_steps(directory)):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    if kill_after_a_checkpoint:
        process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_pruned_run(tmp_path):
    reference = _train(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    killed = _train(interrupted, kill_after_a_checkpoint=True)
    assert killed.returncode == -signal.SIGKILL
    killed_at = max(_saved_steps(interrupted))
    assert 2 < killed_at < 20, "the kill missed the pruning schedule; nothing was tested"

    resumed = _train(interrupted)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from the checkpoint at step {killed_at}" in resumed.stderr
    _, expected = flax_squeezenet.load_pretrained(tmp_path / "reference" / "model")
    _, actual = flax_squeezenet.load_pretrained(interrupted / "model")
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path)), expected, actual
    )
    assert pruning.kernel_density(actual["params"]) == pytest.approx(0.3, abs=0.01)
