"""NNX modules: same numbers as the linen modules, conversion both ways, pretrained loads, fine-tuning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import require_shared
from flax import nnx
from test_pretrained import (  # noqa: F401  (fixtures)
    NCNN,
    assert_trees_equal,
    http_server,
    isolated_cache,
    random_variables,
    serve_torchvision_weights,
    torchvision_pth,
)

import flax_squeezenet as fsq
import flax_squeezenet.nnx as fsq_nnx
from flax_squeezenet import preprocess

VARIANTS = {
    "squeezenet1_0": fsq.squeezenet1_0(),
    "squeezenet1_1": fsq.squeezenet1_1(),
    "squeezenet1_0_simple_bypass": fsq.squeezenet1_0_simple_bypass(),
    "squeezenet1_0_complex_bypass": fsq.squeezenet1_0_complex_bypass(),
    "metaparameters": fsq.squeezenet_metaparameters(base_e=64, incr_e=32, pct3x3=0.25, freq=1, sr=0.25, num_classes=7),
    "classifier_padding": fsq.squeezenet1_0_complex_bypass(num_classes=7, classifier_padding=1),
}
PHOTOS = ("images/cat.jpg", "data/imagenet-photos/n01443537_2625_goldfish.jpg",
          "data/imagenet-photos/n00007846_147031_person.jpg")  # fmt: skip


def linen_and_nnx(module, seed=0):
    """Random linen variables scaled so activations stay O(1), and the NNX module made from them."""
    variables = jax.tree_util.tree_map(lambda leaf: 0.05 * leaf, random_variables(module, seed))
    model = fsq_nnx.to_nnx(module, variables)
    model.eval()
    return variables, model


@pytest.fixture(scope="module")
def photos():
    return preprocess([require_shared(path) for path in PHOTOS])


@pytest.mark.parametrize("name", VARIANTS)
def test_nnx_logits_equal_linen_on_real_images(name, photos):
    module = VARIANTS[name]
    variables, model = linen_and_nnx(module)
    expected = jax.jit(module.apply)(variables, photos)
    got = nnx.jit(lambda m, x: m(x))(model, photos)
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_nnx_gradients_equal_linen(name):
    module = VARIANTS[name]
    variables, model = linen_and_nnx(module, seed=1)
    images = jax.random.normal(jax.random.key(0), (2, 48, 48, 3))
    labels = jnp.array([1, 5])

    def loss(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    expected = jax.jit(jax.grad(lambda p: loss(module.apply({"params": p}, images))))(variables["params"])
    got = nnx.jit(nnx.grad(lambda m: loss(m(images))))(model)
    got = nnx.to_pure_dict(got)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_to_linen_round_trips_names_options_and_parameters():
    module = VARIANTS["squeezenet1_0_complex_bypass"]
    variables, model = linen_and_nnx(module)
    assert model.fire2_bypass.kernel.shape == variables["params"]["fire2_bypass"]["kernel"].shape
    back, back_variables = fsq_nnx.to_linen(model)
    assert back == module
    assert_trees_equal(back_variables, variables)


def test_to_nnx_names_the_misfitting_parameter():
    variables = random_variables(fsq.squeezenet1_0())
    with pytest.raises(ValueError, match="conv1/kernel"):
        fsq_nnx.to_nnx(fsq.squeezenet1_1(), variables)


@pytest.mark.parametrize("name, last", [("squeezenet1_1", ("fire3", "fire5")), ("squeezenet1_0", ("fire4", "fire8"))])
def test_stages_are_the_last_maps_before_each_pool(name, last):
    module = VARIANTS[name]
    variables, model = linen_and_nnx(module)
    images = jax.random.normal(jax.random.key(3), (1, 64, 64, 3))
    stages = model(images, output="stages")
    assert list(stages) == ["stride2", "stride4", "stride8", "stride16"]
    _, captured = module.apply(variables, images, capture_intermediates=lambda m, method: method == "branches",
                               mutable=["intermediates"])  # fmt: skip
    for key, fire in zip(("stride4", "stride8"), last):
        branches = captured["intermediates"][fire]["branches"][0]
        np.testing.assert_allclose(stages[key], jnp.concatenate(branches, axis=-1), atol=1e-6)
    np.testing.assert_allclose(stages["stride16"], module.apply(variables, images, output="feature_map"), atol=1e-6)
    conv1 = variables["params"]["conv1"]
    stem = jax.lax.conv_general_dilated(images, conv1["kernel"], (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(stages["stride2"], jax.nn.relu(stem + conv1["bias"]), atol=1e-5)


def test_pooled_and_feature_map_outputs_match_linen():
    module = VARIANTS["squeezenet1_1"]
    variables, model = linen_and_nnx(module)
    images = jax.random.normal(jax.random.key(4), (2, 40, 40, 3))
    for output in ("pooled", "feature_map"):
        np.testing.assert_allclose(model(images, output=output), module.apply(variables, images, output=output), atol=1e-6)
    with pytest.raises(ValueError, match="expected output"):
        model(images, output="pixels")


# --- pretrained weights, every source ------------------------------------------------------------


def test_nnx_pretrained_ncnn_classifies_like_linen(photos):
    module, variables = fsq.load_pretrained(require_shared(NCNN))
    model = fsq_nnx.load_pretrained(require_shared(NCNN))
    assert model.dropout.deterministic, "a loaded model is in eval mode"
    logits = nnx.jit(lambda m, x: m(x))(model, photos)
    np.testing.assert_allclose(logits, jax.jit(module.apply)(variables, photos), rtol=0, atol=1e-6)
    assert set(np.argsort(-np.asarray(logits[0]))[:5].tolist()) & set(range(281, 286)), "a domestic cat"
    assert int(np.argmax(logits[1])) == 1, "goldfish"


def test_nnx_pretrained_from_deep_compression_file_classifies_like_linen(photos):
    path = require_shared("pretrained/deepcompression_squeezenet1_0.net")
    module, variables = fsq.load_pretrained(path)
    model = fsq_nnx.load_pretrained(path)
    assert (model.stages, model.classifier_padding) == (fsq.V1_0, 1)
    assert model.classifier.padding == ((1, 1), (1, 1))
    assert_trees_equal(fsq_nnx.to_linen(model)[1], variables)
    logits = nnx.jit(lambda m, x: m(x))(model, photos)
    np.testing.assert_allclose(logits, jax.jit(module.apply)(variables, photos), rtol=0, atol=1e-5)
    unpadded = module.clone(classifier_padding=0).apply(variables, photos)
    assert not np.allclose(logits, unpadded, atol=1e-3), "the padded border changes the logits"


def test_padded_classifier_round_trips_and_changes_the_logits():
    module = VARIANTS["classifier_padding"]
    variables, model = linen_and_nnx(module)
    assert fsq_nnx.to_linen(model)[0] == module
    images = jax.random.normal(jax.random.key(6), (2, 48, 48, 3))
    unpadded = fsq_nnx.to_nnx(module.clone(classifier_padding=0), variables)
    unpadded.eval()
    assert not np.allclose(model(images), unpadded(images), atol=1e-4)


def test_submodules_are_the_layer_plan():
    model = nnx.eval_shape(lambda: fsq_nnx.squeezenet1_0(bypass="complex", classifier_padding=2, rngs=nnx.Rngs(0)))
    for conv in fsq.zoo.layers.convolutions(model.plan):
        module = functools.reduce(getattr, conv.path, model)
        assert (module.in_features, module.out_features) == (conv.in_channels, conv.out_channels), conv.name
        assert (module.kernel_size, module.strides) == ((conv.kernel,) * 2, (conv.stride,) * 2), conv.name
        assert module.padding == ((conv.padding,) * 2,) * 2, conv.name
    assert model.classifier.padding == ((2, 2), (2, 2))


@pytest.mark.parametrize("module, kept, expected", [
    (fsq.squeezenet1_1(), (), {"fire3", "fire5"}),
    (fsq.squeezenet1_0_simple_bypass(), (), {"fire4", "fire8"}),
    (fsq.squeezenet1_0_complex_bypass(), (), set()),
    (fsq.squeezenet1_1(), ("fire3",), {"fire5"}),
])  # fmt: skip
def test_fire_layers_pool_their_branches_only_without_shortcut_or_kept_output(module, kept, expected):
    assert fsq.zoo.layers.self_pooling_fires(module.plan, kept) == expected


def test_bad_options_are_refused_as_in_linen():
    with pytest.raises(ValueError, match="classifier_padding >= 0"):
        fsq_nnx.squeezenet1_1(classifier_padding=-1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="expected bypass"):
        fsq_nnx.squeezenet1_1(bypass="full", rngs=nnx.Rngs(0))


def test_nnx_pretrained_from_pth_name_and_saved_directory(http_server, tmp_path, monkeypatch):  # noqa: F811
    path, requests = serve_torchvision_weights(http_server, tmp_path, monkeypatch)
    _, expected = fsq.load_pretrained(path)
    by_name = fsq_nnx.load_pretrained("squeezenet1_1")
    assert len(requests) == 1
    assert_trees_equal(fsq_nnx.to_linen(by_name)[1], expected)
    assert_trees_equal(fsq_nnx.to_linen(fsq_nnx.load_pretrained(path))[1], expected)
    v1_0 = torchvision_pth(tmp_path / "v1_0.pth", "1_0")
    assert fsq_nnx.load_pretrained(v1_0).stages == fsq.V1_0
    fsq.save_pretrained(tmp_path / "saved", expected, model="squeezenet1_1", dropout_rate=0.25)
    saved = fsq_nnx.load_pretrained(tmp_path / "saved", num_classes=5)
    assert (saved.dropout_rate, saved.num_classes) == (0.25, 5)
    assert_trees_equal(fsq_nnx.to_linen(saved)[1]["params"]["fire9"], expected["params"]["fire9"])


# --- fine-tuning the NNX way: a new head, a frozen backbone --------------------------------------


def test_new_head_and_frozen_backbone_train_only_the_head():
    variables, model = linen_and_nnx(fsq.squeezenet1_1(), seed=2)
    model.classifier = nnx.Conv(512, 3, (1, 1), kernel_init=nnx.initializers.normal(0.01), rngs=nnx.Rngs(1))
    model.train()
    head_only = nnx.All(nnx.Param, nnx.PathContains("classifier"))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=head_only)
    images = jax.random.normal(jax.random.key(5), (4, 32, 32, 3))
    labels = jnp.array([0, 1, 2, 1])

    @nnx.jit
    def train_step(model, optimizer):
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()

        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, head_only))(model)
        optimizer.update(model, grads)
        return value

    head_before = nnx.to_pure_dict(nnx.state(model.classifier, nnx.Param))
    losses = [float(train_step(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]
    backbone = {k: v for k, v in fsq_nnx.to_linen(model)[1]["params"].items() if k != "classifier"}
    assert_trees_equal(backbone, {k: v for k, v in variables["params"].items() if k != "classifier"})
    head_after = nnx.to_pure_dict(nnx.state(model.classifier, nnx.Param))
    assert not np.allclose(head_after["kernel"], head_before["kernel"])
