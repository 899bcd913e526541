"""Magnitude pruning: masks, the cubic schedule, and the optax transformation through training and resume."""

import functools

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import require_shared

from flax_squeezenet.compression import pruning
from flax_squeezenet.weights.deepcompression import load_deep_compression


def test_magnitude_mask_keeps_the_largest_weights():
    kernel = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 4, 5)), jnp.float32)
    mask = pruning.magnitude_mask(kernel, 0.3)
    assert int(mask.sum()) == round(0.3 * kernel.size)
    assert jnp.min(jnp.abs(kernel)[mask]) >= jnp.max(jnp.abs(kernel)[~mask])


def test_cubic_schedule_goes_from_initial_to_final_density():
    densities = [float(pruning.cubic_density(step, 0.2, 10, 110)) for step in (0, 10, 60, 110, 500)]
    assert densities[0] == densities[1] == 1.0 and densities[3] == densities[4] == pytest.approx(0.2)
    assert densities[2] == pytest.approx(0.2 + 0.8 * 0.5**3)


def test_layer_densities_use_overrides_and_refuse_unknown_layers():
    params = {
        "conv1": {"kernel": np.ones((3, 3, 3, 8)), "bias": np.ones(8)},
        "classifier": {"kernel": np.ones((1, 1, 8, 4))},
    }
    densities = pruning.layer_densities(params, 0.5, {"classifier": 0.1})
    assert densities == {"conv1": {"kernel": 0.5, "bias": 1.0}, "classifier": {"kernel": 0.1}}
    with pytest.raises(ValueError, match="fire2/squeeze"):
        pruning.layer_densities(params, 0.5, {"fire2/squeeze": 0.1})


def test_paper_densities_match_the_paper_file():
    _, _, params = load_deep_compression(require_shared("pretrained/deepcompression_squeezenet1_0.net"))
    flat = {path[: -len("/kernel")]: leaf for path, leaf in flax.traverse_util.flatten_dict(params, sep="/").items()
            if path.endswith("/kernel")}  # fmt: skip
    assert set(flat) == set(pruning.PAPER_V1_0_DENSITIES)
    for layer, kernel in flat.items():
        density = np.count_nonzero(kernel) / kernel.size
        assert density == pytest.approx(pruning.PAPER_V1_0_DENSITIES[layer], abs=0.02), layer
    table = sum(pruning.PAPER_V1_0_DENSITIES[layer] * kernel.size for layer, kernel in flat.items())
    paper = sum(np.count_nonzero(kernel) for kernel in flat.values())
    assert table / paper == pytest.approx(1.0, abs=0.01)


def tiny_problem():
    """(params, optimizer with pruning chained last, un-jitted train step) of a tiny conv net."""
    rng = np.random.default_rng(1)
    params = {
        "conv1": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 2, 8)), jnp.float32), "bias": jnp.zeros(8)},
        "classifier": {"kernel": jnp.asarray(rng.standard_normal((1, 1, 8, 4)), jnp.float32), "bias": jnp.zeros(4)},
    }
    images = jnp.asarray(rng.standard_normal((16, 6, 6, 2)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, 16))

    def loss(params):
        x = jax.lax.conv_general_dilated(
            images, params["conv1"]["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = jax.nn.relu(x + params["conv1"]["bias"])
        logits = jnp.mean(x, axis=(1, 2)) @ params["classifier"]["kernel"][0, 0] + params["classifier"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    prune = pruning.prune_by_magnitude(0.25, {"classifier": 0.5}, begin_step=2, end_step=8, frequency=2)
    optimizer = optax.chain(optax.sgd(0.1, momentum=0.9), prune)

    def step(params, opt_state, axis_name=None):
        grads = jax.grad(loss)(params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return params, optimizer, step


def train(params, opt_state, step, steps):
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
        masks = opt_state[1].masks
        for leaf, mask in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(masks)):
            assert jnp.all(leaf[~mask] == 0)  # exactly zero after every update
    return params, opt_state


def test_pruned_weights_stay_zero_and_reach_the_target_density():
    params, optimizer, step = tiny_problem()
    params, opt_state = train(params, optimizer.init(params), jax.jit(step), 12)
    masks = opt_state[1].masks
    assert int(masks["conv1"]["kernel"].sum()) == round(0.25 * 144)
    assert int(masks["classifier"]["kernel"].sum()) == round(0.5 * 32)
    assert bool(jnp.all(masks["conv1"]["bias"]))
    assert int(jnp.count_nonzero(params["conv1"]["kernel"])) == round(0.25 * 144)


def test_resume_from_a_checkpoint_is_exact(tmp_path):
    params, optimizer, step = tiny_problem()
    step = jax.jit(step)
    straight, straight_state = train(params, optimizer.init(params), step, 10)
    half, half_state = train(params, optimizer.init(params), step, 5)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", {"params": half, "opt_state": half_state})
        checkpointer.wait_until_finished()
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, {"params": half, "opt_state": half_state})
        restored = checkpointer.restore(tmp_path / "state", target)
    resumed, resumed_state = train(restored["params"], restored["opt_state"], step, 5)
    leaves = [jax.tree_util.tree_leaves(run) for run in ((straight, straight_state), (resumed, resumed_state))]
    for a, b in zip(*leaves):
        np.testing.assert_array_equal(a, b)



def test_pmap_gives_the_masks_of_jit():
    params, optimizer, step = tiny_problem()
    jit_params, jit_state = train(params, optimizer.init(params), jax.jit(step), 9)
    count = jax.local_device_count()

    def replicate(tree):
        return jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf] * count), tree)

    pmapped = jax.pmap(functools.partial(step, axis_name="batch"), axis_name="batch")
    replicated_params, replicated_state = replicate(params), replicate(optimizer.init(params))
    for _ in range(9):
        replicated_params, replicated_state = pmapped(replicated_params, replicated_state)
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], (replicated_params, replicated_state[1].masks))
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves((jit_params, jit_state[1].masks))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
