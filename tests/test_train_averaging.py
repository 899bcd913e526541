"""Weight averaging in `python -m train` (`average_from_step`): the evaluated and saved model is the
mean of the parameters after each step past the start, kept in the optimiser state so runs resume
exactly and train alike under jit over a mesh and under pmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import run_training, tiny_config, train_in_process

import flax_squeezenet
from train import parallel, run, steps
from train.averaging import average_weights, model_params
from train.evaluate import evaluate

AVERAGED = dict(average_from_step=6, schedule="constant", warmup_steps=0,
                num_train_steps=12, eval_every_steps=12, checkpoint_every_steps=4)  # fmt: skip


def _saved_params(directory):
    return flax_squeezenet.load_pretrained(directory)[1]["params"]


def _assert_trees_equal(expected, actual):
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path)), expected, actual
    )


@pytest.mark.parametrize("every", [1, 3])
def test_the_average_is_the_mean_of_the_parameters_reached_every_period_past_the_start(every):
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32), "bias": jnp.zeros(4)}}
    tx = average_weights(optax.sgd(0.1, momentum=0.9), start_step=2, every=every)
    state = tx.init(params)
    averaged = []
    for update_number in range(1, 12):
        gradient = jax.tree.map(lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32), params)
        updates, state = jax.jit(tx.update)(gradient, state, params)
        params = optax.apply_updates(params, updates)
        if update_number > 2 and (update_number - 2) % every == 0:
            averaged.append(params)
        if not averaged:  # before the first step averaged, the "average" is the parameters themselves
            jax.tree.map(lambda e, a: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7), params, state.average)
    assert len(averaged) == 9 // every
    expected = jax.tree.map(lambda *leaves: np.mean(np.stack(leaves), axis=0), *averaged)
    jax.tree.map(lambda e, a: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6), expected, state.average)
    assert not np.allclose(state.average["conv"]["kernel"], params["conv"]["kernel"])


def test_run_evaluates_and_saves_the_average_and_resumes_exactly(tmp_path):
    config = tiny_config(**AVERAGED)
    result = train_in_process(config, tmp_path / "reference")
    finished = run.build_run(config, tmp_path / "reference")
    state, _ = run.restore_state(finished, "latest")
    saved = _saved_params(tmp_path / "reference/model")
    _assert_trees_equal(jax.device_get(model_params(state)), saved)
    assert not np.allclose(saved["classifier"]["kernel"], state.params["classifier"]["kernel"])
    eval_step = parallel.jit_eval_step(steps.eval_step, finished.mesh)
    assert evaluate(finished, state, eval_step)["loss"] == pytest.approx(result["eval"]["loss"])
    last_step_only = state.replace(opt_state=state.opt_state.inner_state)
    assert evaluate(finished, last_step_only, eval_step)["loss"] != pytest.approx(result["eval"]["loss"])

    train_in_process(tiny_config(**{**config.to_dict(), "num_train_steps": 8}), tmp_path / "resumed")
    assert train_in_process(config, tmp_path / "resumed")["step"] == 12
    _assert_trees_equal(saved, _saved_params(tmp_path / "resumed/model"))


@pytest.mark.slow
def test_jit_over_a_mesh_and_pmap_average_alike(tmp_path):
    models = {}
    for mode in ("jit", "pmap"):
        done = run_training(tmp_path / mode, tiny_config(**AVERAGED, parallel=mode), num_devices=2, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        models[mode] = _saved_params(tmp_path / mode / "model")
    # Adam turns the two layouts' last-bit gradient differences into ~1e-5 moves; a mean that skipped
    # or misweighted steps would differ by the learning rate (3e-4) times the steps.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5), models["jit"], models["pmap"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"average_from_step": -1}, "average_from_step must be an integer of at least 0"),
        ({"average_from_step": 8, "average_every_steps": 5}, r"\(8\) \+ average_every_steps \(5\) must be at most num_train_steps \(12\)"),
        ({"average_from_step": 0, "average_every_steps": 0}, "average_every_steps must be an integer of at least 1"),
        ({"schedule": "cosine_restarts"}, "cycle_steps must be at least 1 with schedule 'cosine_restarts'"),
        ({"average_from_step": 4, "share_bits": 4}, "share_bits and average_from_step cannot both be set"),
        ({"average_from_step": 6, "prune_density": 0.5, "prune_end_step": 8},
         r"average_from_step \(6\) must be at least the step pruning ends at \(8\)"),
    ],
)
def test_bad_averaging_keys_are_refused_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run.build_run(tiny_config(**overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()
