"""Adaptive rounding of shared weights: the conv input moments against numpy, the rounding against
round-to-nearest on the layer's output, and `compress(..., weight_rounding="adaround")` end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_squeezenet import save_pretrained
from flax_squeezenet.cli import compress as cli
from flax_squeezenet.compression import compress
from flax_squeezenet.compression.adaptive import conv_groups, paired_moments, round_to_codebook
from flax_squeezenet.compression.rounding import InputMoments, PairedMoments
from flax_squeezenet.compression.sensitivity import conv_sizes
from flax_squeezenet.compression.sharing import share_weights
from flax_squeezenet.zoo.models import squeezenet1_1


@pytest.fixture(scope="module")
def model():
    module = squeezenet1_1(num_classes=5)
    variables = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
    images = np.random.default_rng(1).standard_normal((6, 48, 48, 3)).astype(np.float32)
    return module, variables["params"], images


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    module, params, _ = model
    return save_pretrained(tmp_path_factory.mktemp("adaptive") / "model", {"params": params},
                           model="squeezenet1_1", num_classes=5)  # fmt: skip


def numpy_patches(images: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """Every (C, kh, kw)-flattened input patch of an unpadded conv, one row per output position."""
    n, height, width, channels = images.shape
    rows = []
    for y in range(0, height - kernel + 1, stride):
        for x in range(0, width - kernel + 1, stride):
            rows.append(images[:, y : y + kernel, x : x + kernel, :].transpose(0, 3, 1, 2).reshape(n, -1))
    return np.concatenate(rows).astype(np.float64)


def test_moments_are_those_of_every_output_positions_patch(model):
    module, params, images = model
    groups = conv_groups(module, params, images[:1])
    assert groups[:3] == [["conv1"], ["fire2/squeeze"], ["fire2/expand1x1", "fire2/expand3x3"]]
    assert sorted(sum(groups, [])) == sorted(conv_sizes(params)) and len(groups) == 18
    moments = paired_moments(module, params, params, images, ["conv1"])["conv1"]
    expected = InputMoments.from_rows(numpy_patches(images, kernel=3, stride=2))  # squeezenet1_1's conv1
    np.testing.assert_allclose(moments.rounded.mean, expected.mean, atol=1e-5)
    np.testing.assert_allclose(moments.source_mean, expected.mean, atol=1e-5)
    np.testing.assert_allclose(moments.rounded.covariance, expected.covariance, atol=1e-4)
    np.testing.assert_allclose(moments.cross, 0.0, atol=1e-4)


def test_cross_moments_see_the_earlier_layers_rounding(model):
    module, params, images = model
    changed = jax.tree_util.tree_map(lambda x: x, params)
    changed["conv1"] = {**params["conv1"], "kernel": params["conv1"]["kernel"] * 1.5}
    moments = paired_moments(module, params, changed, images, ["fire2/squeeze"])["fire2/squeeze"]
    source = paired_moments(module, params, params, images, ["fire2/squeeze"])["fire2/squeeze"]
    # conv1 scaled by 1.5 with its bias unchanged: after ReLU the rounded inputs are not the source's.
    assert np.abs(moments.cross).max() > 1e-3 * np.abs(source.rounded.covariance).max()
    np.testing.assert_allclose(moments.source_mean, source.source_mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(moments.rounded.mean, source.rounded.mean, rtol=1e-3)


def output_error(kernel, rounded, bias_change, moments):
    """(variance, squared mean) of the output change of a conv whose (out, fan_in) `kernel` became
    `rounded`, its bias moved by `bias_change`, over inputs with `moments`."""
    difference = kernel - rounded
    shift = difference @ moments.mean - bias_change
    return float(np.sum((difference @ moments.covariance) * difference)), float(np.sum(shift**2))


def test_rounding_picks_neighbouring_values_and_beats_nearest_on_the_output():
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((3, 3, 8, 12)).astype(np.float32)
    kernel[np.abs(kernel) < 0.3] = 0.0
    correlated = rng.standard_normal((500, 72)) @ rng.standard_normal((72, 72)) + 0.5
    inputs = InputMoments.from_rows(correlated)
    moments = PairedMoments(inputs, np.zeros_like(inputs.covariance), inputs.mean)
    shared = share_weights(kernel, 3)
    bias = rng.standard_normal(12).astype(np.float32)
    rounded, corrected = round_to_codebook(kernel, shared, bias, moments)
    np.testing.assert_array_equal(rounded.codebook, shared.codebook)
    assert np.array_equal(rounded.dense() == 0, kernel == 0)
    values = np.sort(shared.codebook[1:])
    below = values[np.clip(np.searchsorted(values, kernel, side="right") - 1, 0, None)]
    above = values[np.clip(np.searchsorted(values, kernel, side="left"), None, len(values) - 1)]
    kept = kernel != 0
    assert np.all((rounded.dense()[kept] == below[kept]) | (rounded.dense()[kept] == above[kept]))
    assert not np.array_equal(rounded.indices, shared.indices)
    rows = lambda k: k.transpose(3, 2, 0, 1).reshape(12, -1)  # noqa: E731
    variance, squared_mean = output_error(rows(kernel), rows(rounded.dense()), corrected - bias, inputs)
    nearest_variance, nearest_squared_mean = output_error(rows(kernel), rows(shared.dense()), 0.0, inputs)
    assert variance < nearest_variance and squared_mean < 1e-6 * nearest_squared_mean


def test_compress_with_adaround_keeps_the_logits_closer(model, checkpoint):
    module, params, images = model
    reference = module.apply({"params": params}, images)
    errors = {}
    for rounding in ("nearest", "adaround"):
        compressed = compress(checkpoint, bits=3, weight_rounding=rounding, images=images)
        errors[rounding] = float(jnp.mean((module.apply({"params": compressed.params()}, images) - reference) ** 2))
    assert errors["adaround"] < errors["nearest"]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"weight_rounding": "adaround"}, "pass images"), ({"weight_rounding": "floor"}, "expected one of nearest, adaround")],
)
def test_compress_refuses_bad_rounding(checkpoint, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compress(checkpoint, bits=4, **kwargs)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "give --images"),
    (["--images", "x.jpg", "--retrain-workdir", "w", "--config", "fashion_mnist"], "run python -m train.compress"),
])  # fmt: skip
def test_cli_adaround_needs_images_without_retraining(checkpoint, tmp_path, capsys, extra, message):
    output = tmp_path / "out.sqz"
    assert cli.main([str(checkpoint), "--output", str(output), "--weight-rounding", "adaround", *extra]) == 1
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_rounding_makes_up_for_inputs_the_earlier_layers_shrank():
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((1, 1, 16, 8)).astype(np.float32)
    source = InputMoments.from_rows(rng.standard_normal((400, 16)) + 1.0)
    shrink = 0.97  # the rounded model's inputs are 0.97 times the source model's
    rounded_inputs = InputMoments(shrink * source.mean, shrink**2 * source.covariance)
    aware = PairedMoments(rounded_inputs, shrink * (1 - shrink) * source.covariance, source.mean)
    unaware = PairedMoments(rounded_inputs, np.zeros_like(source.covariance), shrink * source.mean)
    shared = share_weights(kernel, 4)
    weights = kernel.reshape(16, 8).T.astype(np.float64)

    def source_output_error(moments):
        rounded, _ = round_to_codebook(kernel, shared, np.zeros(8, np.float32), moments)
        q = rounded.dense().reshape(16, 8).T
        # E||W x - Q x'||^2 without the mean, x' = shrink * x: (W - shrink Q) C (W - shrink Q)'
        difference = weights - shrink * q
        return float(np.sum((difference @ source.covariance) * difference)), float(np.mean(np.abs(q)))

    aware_error, aware_size = source_output_error(aware)
    unaware_error, unaware_size = source_output_error(unaware)
    assert aware_error < unaware_error and aware_size > unaware_size
