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
    fires = [s for s in stages if isinstance(s, fsq.FireStage)]
    assert [f.features for f in fires] == [64 + 32 * i for i in range(8)]
    assert fires[0] == fsq.FireStage(32, 48, 16)
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


def test_layer_plan_names_channels_and_shortcuts_of_the_complex_bypass():
    plan = fsq.layer_plan(fsq.V1_0, bypass="complex", num_classes=10)
    # The pools are named as in Caffe's prototxt of the paper's v1.0.
    assert [layer.name for layer in plan] == [
        "conv1", "pool1", "fire2", "fire3", "fire4", "pool4", "fire5", "fire6", "fire7", "fire8", "pool8",
        "fire9", "classifier",
    ]  # fmt: skip
    fires = {layer.name: layer for layer in plan if layer.kind == "fire"}
    assert [(f.in_channels, f.out_channels) for f in fires.values()] == [
        (96, 128), (128, 128), (128, 256), (256, 256), (256, 384), (384, 384), (384, 512), (512, 512)
    ]
    assert {name: f.shortcut for name, f in fires.items()} == {
        "fire2": "projection", "fire3": "identity", "fire4": "projection", "fire5": "identity",
        "fire6": "projection", "fire7": "identity", "fire8": "projection", "fire9": "identity",
    }  # fmt: skip
    assert plan[-1].in_channels == 512 and plan[-1].out_channels == 10


@pytest.mark.parametrize("name", ["squeezenet1_1", "squeezenet1_0_complex_bypass"])
def test_every_parameter_is_a_convolution_of_the_plan(name):
    model = fsq.create_model(name, num_classes=10, in_channels=2, classifier_padding=1)
    params = jax.eval_shape(lambda: init(model, 48, channels=2))["params"]
    kernels = {
        "/".join(key.key for key in path[:-1]): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "kernel"
    }  # fmt: skip
    planned = {conv.name: conv.shape for conv in fsq.zoo.layers.convolutions(model.plan)}
    assert kernels == {name: (kh, kw, i, o) for name, (o, i, kh, kw) in planned.items()}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"bypass": "full"}, "expected bypass 'none', 'simple' or 'complex'"),
        ({"classifier_padding": -1}, "classifier_padding >= 0"),
        ({"num_classes": 0}, "num_classes >= 1"),
        ({"in_channels": 1.5}, "integer in_channels"),
    ],
)
def test_layer_plan_refuses_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        fsq.layer_plan(fsq.V1_1, **options)
    with pytest.raises(ValueError, match=message):
        init(fsq.squeezenet1_1(**options), 32)


def test_classifier_padding_averages_a_border_of_relu_bias():
    # Caffe's conv10 (pad 1): the zero border becomes relu(bias) and enters the global average.
    model = fsq.squeezenet1_1(num_classes=6)
    padded = fsq.squeezenet1_1(num_classes=6, classifier_padding=1)
    variables = init(model, 48)
    head = variables["params"]["classifier"]
    bias = jax.random.normal(jax.random.key(5), head["bias"].shape)
    variables = {"params": {**variables["params"], "classifier": {"kernel": head["kernel"] * 100, "bias": bias}}}
    x = jax.random.normal(jax.random.key(6), (2, 48, 48, 3))
    height, width = model.apply(variables, x, output="feature_map").shape[1:3]
    inside = model.apply(variables, x) * height * width
    border = ((height + 2) * (width + 2) - height * width) * jax.nn.relu(bias)
    expected = (inside + border) / ((height + 2) * (width + 2))
    np.testing.assert_allclose(padded.apply(variables, x), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(padded.apply(variables, x), model.apply(variables, x), atol=1e-2)


# (layer, channels, stride) of each "stages" entry: the last map at each stride (v1.0 pools
# after conv1, fire4, fire8; v1.1 after conv1, fire3, fire5).
STAGES = {
    "squeezenet1_0": {"stride2": ("conv1", 96, 2), "stride4": ("fire4", 256, 4), "stride8": ("fire8", 512, 8),
                      "stride16": ("fire9", 512, 16)},
    "squeezenet1_1": {"stride2": ("conv1", 64, 2), "stride4": ("fire3", 128, 4), "stride8": ("fire5", 256, 8),
                      "stride16": ("fire9", 512, 16)},
}  # fmt: skip


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_complex_bypass"])
def test_feature_info_describes_the_stages_output(name):
    model = fsq.create_model(name, num_classes=5)
    expected = STAGES[name.removesuffix("_complex_bypass")]
    info = fsq.feature_info(model.stages, in_channels=3)
    assert {key: (f.layer, f.channels, f.stride) for key, f in info.items()} == expected
    assert model.feature_info == info
    variables = init(model, 64)
    x = jax.random.normal(jax.random.key(7), (2, 64, 64, 3))
    stages = model.apply(variables, x, output="stages")
    assert list(stages) == list(expected)
    # Each pool halves a map in ceil mode, (size - 2) // 2 + 1: 64 -> 29 (7x7/2) or 31 (3x3/2) -> ...
    sizes = {"squeezenet1_0": (29, 14, 7, 3), "squeezenet1_1": (31, 15, 7, 3)}[name.removesuffix("_complex_bypass")]
    for (key, (_, channels, _)), size in zip(expected.items(), sizes):
        assert stages[key].shape == (2, size, size, channels)
    np.testing.assert_array_equal(stages["stride16"], model.apply(variables, x, output="feature_map"))


def test_stages_output_is_in_the_compute_dtype():
    model = fsq.squeezenet1_1(num_classes=5, dtype=jnp.bfloat16)
    stages = model.apply(init(model, 32), jnp.ones((1, 32, 32, 3)), output="stages")
    assert {value.dtype for value in stages.values()} == {jnp.dtype(jnp.bfloat16)}
