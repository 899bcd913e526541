"""Weight sharing with centroid fine-tuning in `python -m train` (`share_bits`): kernels keep at most
2**bits - 1 distinct non-zero values, zeros stay zero, each shared value moves by its weights'
summed gradient, and runs resume exactly and train under jit over a mesh and under pmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import GREY
from train_helpers import run_training, tiny_config, train_in_process

import flax_squeezenet
from flax_squeezenet.compression.trained_sharing import SNAP_UPDATES, with_shared_weights
from train import run

BITS = 2


def _kernels(params) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat if leaf.ndim >= 2}


def _saved_params(directory):
    return flax_squeezenet.load_pretrained(directory)[1]["params"]


@pytest.fixture(scope="module")
def half_pruned_model(tmp_path_factory):
    """A saved 4-class, 1-channel SqueezeNet 1.1 with the smaller half of every kernel's weights zero."""
    module = flax_squeezenet.create_model("squeezenet1_1", num_classes=4, in_channels=1)
    params = module.init(jax.random.key(3), jnp.zeros((1, 20, 20, 1)))["params"]

    def prune(leaf):
        return jnp.where(jnp.abs(leaf) >= jnp.median(jnp.abs(leaf)), leaf, 0.0) if leaf.ndim >= 2 else leaf

    directory = tmp_path_factory.mktemp("pruned") / "model"
    flax_squeezenet.save_pretrained(directory, {"params": jax.tree.map(prune, params)}, model="squeezenet1_1",
                                    num_classes=4, in_channels=1, preprocessing=GREY)  # fmt: skip
    return directory


def test_training_keeps_kernels_shared_and_zeros_zero(tmp_path, half_pruned_model):
    config = tiny_config(init_from=str(half_pruned_model), share_bits=BITS, share_layer_bits={"classifier": 1})
    train_in_process(config, tmp_path / "run")
    before, after = _kernels(_saved_params(half_pruned_model)), _kernels(_saved_params(tmp_path / "run/model"))
    moved = 0
    for path, kernel in after.items():
        bits = 1 if "classifier" in path else BITS
        assert np.unique(kernel[kernel != 0]).size <= 2**bits - 1, path
        np.testing.assert_array_equal(kernel[before[path] == 0], 0.0, err_msg=path)
        assert np.all(kernel[before[path] != 0] != 0), path
        moved += int(np.any(kernel != before[path]))
    assert moved == len(after), "some kernels did not train"


def _brute_force_summed_gradients(clusters: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    summed = np.zeros_like(gradient)
    for index in np.ndindex(gradient.shape):
        if clusters[index] != 0:
            summed[index] = sum(gradient[other] for other in np.ndindex(gradient.shape)
                                if clusters[other] == clusters[index])  # fmt: skip
    return summed


def test_centroid_update_is_the_summed_gradient():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    kernel[rng.random(kernel.shape) < 0.3] = 0.0
    params = {"conv": {"kernel": jnp.asarray(kernel), "bias": jnp.ones(4)}}
    tx = with_shared_weights(optax.sgd(0.5), bits=3)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(SNAP_UPDATES):
        moves, state = update(jax.tree.map(jnp.ones_like, params), state, params)
        params = optax.apply_updates(params, moves)
    shared = np.asarray(params["conv"]["kernel"])
    assert np.unique(shared[shared != 0]).size <= 7
    np.testing.assert_array_equal(shared[kernel == 0], 0.0)

    gradient = rng.standard_normal(kernel.shape).astype(np.float32)
    bias_gradient = rng.standard_normal(4).astype(np.float32)
    moves, _ = update({"conv": {"kernel": jnp.asarray(gradient), "bias": jnp.asarray(bias_gradient)}}, state, params)
    clusters = np.asarray(state.clusters["conv"]["kernel"])
    expected = -0.5 * _brute_force_summed_gradients(clusters, gradient)
    np.testing.assert_allclose(np.asarray(moves["conv"]["kernel"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(moves["conv"]["bias"]), -0.5 * bias_gradient, rtol=1e-6)


def test_resumed_run_matches_uninterrupted_run(tmp_path, half_pruned_model):
    config = tiny_config(init_from=str(half_pruned_model), share_bits=BITS, schedule="constant", warmup_steps=0,
                         num_train_steps=8, eval_every_steps=8)  # fmt: skip
    train_in_process(config, tmp_path / "reference")
    first_half = tiny_config(**{**config.to_dict(), "num_train_steps": 4})
    train_in_process(first_half, tmp_path / "resumed")
    result = train_in_process(config, tmp_path / "resumed")
    assert result["step"] == 8
    expected, actual = _saved_params(tmp_path / "reference/model"), _saved_params(tmp_path / "resumed/model")
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path)), expected, actual
    )


@pytest.mark.slow
def test_jit_over_a_mesh_and_pmap_train_the_same_shared_weights(tmp_path, half_pruned_model):
    models = {}
    for mode in ("jit", "pmap"):
        config = tiny_config(init_from=str(half_pruned_model), share_bits=BITS, parallel=mode, num_train_steps=4,
                             eval_every_steps=4)  # fmt: skip
        done = run_training(tmp_path / mode, config, num_devices=2, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        models[mode] = _kernels(_saved_params(tmp_path / mode / "model"))
    for path, kernel in models["pmap"].items():
        assert np.unique(kernel[kernel != 0]).size <= 2**BITS - 1, path
        np.testing.assert_allclose(kernel, models["jit"][path], rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"share_bits": 9}, "share_bits must be an integer from 1 to 8"),
        ({"share_bits": 4, "share_layer_bits": {"classifier": 0}}, "share_layer_bits.classifier must be"),
        ({"share_layer_bits": {"classifier": 4}}, "share_layer_bits needs share_bits"),
        ({"share_bits": 4, "share_layer_bits": {"fire99/squeeze": 4}}, "name no conv layer: fire99/squeeze"),
        ({"share_bits": 4, "prune_density": 0.5}, "share_bits and prune_density cannot both be set"),
    ],
)
def test_bad_sharing_keys_are_refused_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run.build_run(tiny_config(**overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()
