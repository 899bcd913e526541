import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_squeezenet as fsq


def init(model, size=224, channels=3):
    return model.init(jax.random.key(0), jnp.zeros((1, size, size, channels)))


def param_count(model):
    return fsq.count_params(jax.eval_shape(lambda: init(model)))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("squeezenet1_0", 1_248_424),
        ("squeezenet1_1", 1_235_496),
        ("squeezenet1_0_simple_bypass", 1_248_424),
        # complex bypass: v1.0 plus 1x1 convs (with bias) around fire2, 4, 6 and 8.
        ("squeezenet1_0_complex_bypass", 1_248_424 + 96 * 128 + 128 * 256 + 256 * 384 + 384 * 512 + 1280),
        ("squeezenet_metaparameters", 1_248_424),
    ],
)
def test_parameter_counts(name, expected):
    assert param_count(fsq.create_model(name)) == expected


def test_metaparameter_defaults_rebuild_v1_0():
    assert fsq.metaparameter_stages() == fsq.V1_0


def test_metaparameters_change_the_fire_modules():
    stages = fsq.metaparameter_stages(base_e=64, incr_e=32, pct3x3=0.25, freq=1, sr=0.5)
    fires = [s for s in stages if isinstance(s, fsq.Fire)]
    assert [f.features for f in fires] == [64 + 32 * i for i in range(8)]
    assert fires[0] == fsq.Fire(32, 48, 16)
    with pytest.raises(ValueError, match="pct3x3"):
        fsq.metaparameter_stages(pct3x3=1.5)


def test_simple_bypass_adds_identity_only_where_channels_match():
    model = fsq.squeezenet1_0_simple_bypass()
    variables = init(model, 64)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    plain = fsq.squeezenet1_0().apply(variables, x, output="feature_map")
    bypassed = model.apply(variables, x, output="feature_map")
    assert not np.allclose(plain, bypassed)
    assert "fire3_bypass" not in variables["params"]


def test_complex_bypass_projects_where_channels_differ():
    params = init(fsq.squeezenet1_0_complex_bypass(), 64)["params"]
    assert sorted(k for k in params if k.endswith("_bypass")) == [
        "fire2_bypass", "fire4_bypass", "fire6_bypass", "fire8_bypass"
    ]
    assert params["fire2_bypass"]["kernel"].shape == (1, 1, 96, 128)


@pytest.mark.parametrize("name, minimum", [("squeezenet1_0", 21), ("squeezenet1_1", 17)])
def test_minimum_input_size_matches_torchvision(name, minimum):
    model = fsq.create_model(name, num_classes=10)
    assert model.min_input_size == minimum
    variables = init(model, minimum)
    out = model.apply(variables, jnp.ones((1, minimum, minimum + 3, 3)))
    assert out.shape == (1, 10)
    with pytest.raises(ValueError, match=f"at least {minimum} pixels"):
        model.apply(variables, jnp.ones((1, minimum - 1, 64, 3)))


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((224, 224, 3), np.float32), "expected images of shape"),
        (np.zeros((1, 224, 224, 1), np.float32), "expected 3 channels"),
        (np.zeros((1, 3, 224, 224), np.float32), "expected 3 channels"),
        (np.zeros((1, 224, 224, 3), np.uint8), "floating-point"),
    ],
)
def test_bad_input_raises_a_clear_error(x, message):
    model = fsq.squeezenet1_1(num_classes=4)
    variables = init(model, 32)
    with pytest.raises(ValueError, match=message):
        jax.jit(model.apply)(variables, x)


def test_unknown_model_and_output_are_named():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        fsq.create_model("resnet")
    model = fsq.squeezenet1_1(num_classes=4)
    variables = init(model, 32)
    with pytest.raises(ValueError, match="expected output"):
        model.apply(variables, jnp.zeros((1, 32, 32, 3)), output="x")


def test_initialisation_follows_torchvision():
    params = init(fsq.squeezenet1_0(), 64)["params"]
    head = np.asarray(params["classifier"]["kernel"])
    assert abs(head.std() - 0.01) < 0.001
    conv1 = np.asarray(params["conv1"]["kernel"])
    bound = np.sqrt(6.0 / (7 * 7 * 3))  # kaiming-uniform, fan_in = 7*7*3
    assert np.abs(conv1).max() <= bound and np.abs(conv1).max() > 0.95 * bound
    biases = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "bias"]
    assert len(biases) == 26 and not any(np.any(b) for b in biases)


def test_feature_extraction_modes():
    model = fsq.squeezenet1_1(num_classes=7)
    variables = init(model, 64)
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    fmap = model.apply(variables, x, output="feature_map")
    pooled = model.apply(variables, x, output="pooled")
    assert fmap.shape == (2, 3, 3, 512) and pooled.shape == (2, 512)
    np.testing.assert_allclose(pooled, fmap.mean(axis=(1, 2)), rtol=1e-6, atol=1e-6)


def test_dropout_only_in_training():
    model = fsq.squeezenet1_1(num_classes=7)
    variables = init(model, 32)
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    np.testing.assert_array_equal(model.apply(variables, x), model.apply(variables, x))
    a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)


def test_jit_traces_once_per_shape_and_outputs_are_finite():
    model = fsq.squeezenet1_1(num_classes=5)
    variables = init(model, 32)

    @jax.jit
    @chex.assert_max_traces(n=2)
    def apply(variables, x):
        return model.apply(variables, x)

    for _ in range(3):
        for size in (32, 40):
            out = apply(variables, jnp.ones((2, size, size, 3)))
            chex.assert_tree_all_finite(out)
            chex.assert_shape(out, (2, 5))


def test_bfloat16_compute_with_float32_params():
    model = fsq.squeezenet1_1(num_classes=5, dtype=jnp.bfloat16)
    variables = init(model, 32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    out = model.apply(variables, x)
    assert out.dtype == jnp.float32
    chex.assert_tree_all_finite(out)
    ref = fsq.squeezenet1_1(num_classes=5).apply(variables, x)
    np.testing.assert_allclose(out, ref, atol=0.05)


def test_grayscale_input_channels():
    model = fsq.squeezenet1_1(num_classes=10, in_channels=1)
    variables = init(model, 32, channels=1)
    assert model.apply(variables, jnp.ones((3, 32, 32, 1))).shape == (3, 10)
