"""Per-layer densities from a sensitivity analysis (`flax_squeezenet.compression.sensitivity`), the
train images it is measured on in the retraining pipeline, and `squeezenet-compress --density-plan`."""

import json

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GREY
from export_helpers import write_images
from train_helpers import tiny_config

import flax_squeezenet
from flax_squeezenet.cli import compress as cli
from flax_squeezenet.compression import pruning, sensitivity
from train import compress as retrain
from train import input_pipeline

SIZES = {"small": 100, "big": 10_000, "middle": 1_000}


def _table(small, big, middle):
    """Agreement by level for the three layers of SIZES (one list of four values each, levels LEVELS)."""
    return {name: dict(zip(sensitivity.LEVELS, row)) for name, row in zip(SIZES, (small, big, middle))}


def _kept(plan):
    return sum(size * plan.get(name, 1.0) for name, size in SIZES.items()) / sum(SIZES.values())


def test_allocate_prunes_the_layers_that_cost_least_per_weight():
    agreement = _table(small=[0.5, 0.3, 0.2, 0.1], big=[1.0, 1.0, 0.99, 0.9], middle=[1.0, 0.98, 0.9, 0.8])
    plan = sensitivity.allocate(SIZES, agreement, 0.3)
    assert "small" not in plan, "the sensitive small layer was pruned"
    assert plan == {"big": 0.2, "middle": 0.5} and _kept(plan) <= 0.3
    assert sensitivity.allocate(SIZES, agreement, 1.0) == {}


@pytest.mark.parametrize("density, message", [(0.05, "below the lowest level measured, 0.1"), (0.0, r"\(0, 1\]")])
def test_allocate_refuses_a_density_it_cannot_reach(density, message):
    with pytest.raises(ValueError, match=message):
        sensitivity.allocate(SIZES, _table(*[[1.0] * 4] * 3), density)


@pytest.fixture(scope="module")
def model_and_params():
    module = flax_squeezenet.create_model("squeezenet1_1", num_classes=4, in_channels=1)
    return module, module.init(jax.random.key(3), jnp.zeros((1, 20, 20, 1)))["params"]


def test_layer_agreement_prunes_one_layer_at_a_time(model_and_params):
    _, params = model_and_params

    def conv1_kept(candidate):  # a score that sees only conv1
        return float(jnp.mean(candidate["conv1"]["kernel"] != 0))

    table = sensitivity.layer_agreement(params, conv1_kept, levels=(0.5, 0.25))
    assert set(table) == set(pruning.CONV_LAYERS)
    assert table["conv1"] == pytest.approx({0.5: 0.5, 0.25: 0.25}, abs=0.01)
    assert table["fire9/expand3x3"] == {0.5: 1.0, 0.25: 1.0}


def test_sensitivity_densities_keep_at_most_the_density(model_and_params):
    module, params = model_and_params
    images = np.random.default_rng(0).standard_normal((32, 20, 20, 1)).astype(np.float32)
    plan = sensitivity.sensitivity_densities(module, params, images, 0.4)
    assert plan and set(plan) <= set(pruning.CONV_LAYERS) and set(plan.values()) <= set(sensitivity.LEVELS)
    densities = pruning.layer_densities(params, 1.0, plan)
    pruned = pruning.apply_masks(params, pruning.magnitude_masks(params, densities))
    assert 0.3 < pruning.kernel_density(pruned) <= 0.4


def test_sample_train_images_are_a_fixed_choice_prepared_for_evaluation():
    config = tiny_config(augment="crop_flip")
    first, again = input_pipeline.sample_train_images(config, 5), input_pipeline.sample_train_images(config, 5)
    assert first.shape == (5, 20, 20, 1) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    other_seed = input_pipeline.sample_train_images(tiny_config(seed=1), 5)
    assert not np.array_equal(first, other_seed)
    with pytest.raises(ValueError, match="expected 1 to 64 train images, got 65"):
        input_pipeline.sample_train_images(config, 65)


def test_a_plan_fills_the_layers_the_config_does_not_set(tmp_path):
    config = tiny_config(prune_layer_densities={"classifier": 0.5})
    prune, share = retrain.pipeline_stages(config, "source", tmp_path, density=1.0, bits=6,
                                       layer_densities={"classifier": 0.1, "fire9/expand3x3": 0.2})  # fmt: skip
    assert prune.config.prune_density == 1.0
    assert prune.config.prune_layer_densities.to_dict() == {"classifier": 0.5, "fire9/expand3x3": 0.2}
    assert share.config.prune_density is None and not share.config.prune_layer_densities, "sharing would prune again"


def test_sensitivity_plan_is_measured_on_the_configs_train_images(model_and_params, tmp_path):
    module, params = model_and_params
    weights = flax_squeezenet.save_pretrained(tmp_path / "model", {"params": params}, model="squeezenet1_1",
                                              num_classes=4, in_channels=1, preprocessing=GREY)  # fmt: skip
    config = tiny_config()
    plan = retrain.sensitivity_plan(config, weights, 0.4, num_images=16)
    images = input_pipeline.sample_train_images(config, 16)
    assert plan == sensitivity.sensitivity_densities(module, params, images, 0.4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    module = flax_squeezenet.create_model("squeezenet1_1", num_classes=5)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return flax_squeezenet.save_pretrained(tmp_path_factory.mktemp("plan") / "model", variables,
                                           model="squeezenet1_1", num_classes=5)  # fmt: skip


def test_cli_spreads_the_density_by_sensitivity_on_the_images(checkpoint, tmp_path, capsys):
    images = sorted(str(p) for p in write_images(tmp_path / "images", 6).iterdir())
    output = tmp_path / "model.sqz"
    argv = [str(checkpoint), "--output", str(output), "--density", "0.4", "--density-plan", "sensitivity", "--images", *images]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("sensitivity plan (other convs kept whole): ")
    params = flax_squeezenet.load_pretrained(output)[1]["params"]
    assert 0.3 < pruning.kernel_density(params) <= 0.4
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    kept = {path: float(np.mean(np.asarray(leaf) != 0)) for path, leaf in flat.items() if leaf.ndim >= 2}
    assert len({round(value, 2) for value in kept.values()}) > 1, "every layer kept the same fraction"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--density-plan", "sensitivity"], "give --density"),
        (["--density-plan", "sensitivity", "--density", "0.4"], "give --images (or retrain with python -m train.compress"),
    ],
)
def test_a_sensitivity_plan_without_what_it_needs_is_a_one_line_error(checkpoint, tmp_path, capsys, extra, message):
    assert cli.main([str(checkpoint), "--output", str(tmp_path / "out.sqz"), *extra]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_the_pipelines_plan_is_measured_once_per_workdir_and_weights_and_density(tmp_path, monkeypatch):
    measured = []

    def measure(config, weights, density, progress=False):
        measured.append((weights, density))
        return {"fire9/expand3x3": round(density / 2, 3)}

    monkeypatch.setattr(retrain, "sensitivity_plan", measure)
    first = retrain.recorded_sensitivity_plan(tmp_path / "pipeline", None, "model", 0.4)
    assert retrain.recorded_sensitivity_plan(tmp_path / "pipeline", None, "model", 0.4) == first == {"fire9/expand3x3": 0.2}
    assert len(measured) == 1, "a rerun measured the plan again"
    assert retrain.recorded_sensitivity_plan(tmp_path / "pipeline", None, "model", 0.3) == {"fire9/expand3x3": 0.15}
    assert retrain.recorded_sensitivity_plan(tmp_path / "pipeline", None, "other", 0.3) == {"fire9/expand3x3": 0.15}
    assert measured == [("model", 0.4), ("model", 0.3), ("other", 0.3)]
    (tmp_path / "pipeline" / retrain.PLAN_JSON).write_text("{not json")
    assert retrain.recorded_sensitivity_plan(tmp_path / "pipeline", None, "other", 0.3) == {"fire9/expand3x3": 0.15}
    assert len(measured) == 4 and json.loads((tmp_path / "pipeline" / retrain.PLAN_JSON).read_text())["density"] == 0.3
