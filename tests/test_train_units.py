"""Configs, optimiser schedules, losses and the train/eval steps on one device."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import tiny_config

from train import configs, input_pipeline, optim, parallel, run, steps
from train.configs import default, validation


@pytest.mark.parametrize("name", configs.PRESETS)
def test_presets_build_and_resolve(name):
    config = configs.get_preset(name)
    assert config.dataset and config.model and config.batch_size > 0
    assert pathlib.Path(configs.config_file(name)).is_file()
    validation.validate(config)


# A preset builds on the default, or on the preset it names (a second training stage).
PRESET_BASES = {"cifar10_finetune_160": "cifar10_finetune"}


def test_presets_set_only_what_differs_from_their_base():
    assert configs.get_preset(configs.DEFAULT_PRESET) == default.get_config()
    for name in configs.PRESETS:
        base = PRESET_BASES.get(name)
        reference = configs.get_preset(base) if base else default.get_config()
        source = pathlib.Path(configs.config_file(name)).read_text()
        assert f"from train.configs import {base or 'default'}\n" in source, name
        for key, value in configs.get_preset(name).items():
            assert (f"config.{key} =" in source) == (value != reference[key]), (name, key)


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fashion_mnist, cifar10, cifar10_finetune, cifar10_finetune_160, imagenet"):
        configs.config_file("mnist_big")
    with pytest.raises(ValueError, match="unknown preset"):
        configs.get_preset("mnist_big")
    custom = tmp_path / "mine.py"
    custom.write_text("from train.configs import default\nget_config = default.get_config\n")
    assert configs.config_file(f"{custom}:small") == f"{custom}:small"


def test_warmup_cosine_and_linear_schedules():
    config = tiny_config(learning_rate=1.0, warmup_steps=10, schedule="warmup_cosine")
    schedule = optim.create_learning_rate_schedule(config, 110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.5, abs=1e-6)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)
    linear = optim.create_learning_rate_schedule(tiny_config(learning_rate=0.04, warmup_steps=0, schedule="linear"), 100)
    assert [float(linear(s)) for s in (0, 50, 100)] == pytest.approx([0.04, 0.02, 0.0])
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.create_learning_rate_schedule(tiny_config(schedule="step"), 10)


def test_cosine_restarts_repeat_the_cycle():
    config = tiny_config(learning_rate=1.0, warmup_steps=0, schedule="cosine_restarts", cycle_steps=10,
                         end_learning_rate_factor=0.1)  # fmt: skip
    schedule = optim.create_learning_rate_schedule(config, num_train_steps=30)
    once = optax.cosine_decay_schedule(1.0, 10, alpha=0.1)
    for step in range(30):
        assert float(schedule(step)) == pytest.approx(float(once(step % 10)), abs=1e-6), step
    assert float(schedule(9)) < 0.15 and float(schedule(10)) == pytest.approx(1.0)


def test_gradient_clipping_bounds_the_update():
    config = tiny_config(optimizer="sgd", momentum=0.0, grad_clip_norm=1.0, learning_rate=1.0)
    tx = optim.create_optimizer(config, optax.constant_schedule(1.0), 10)
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.create_optimizer(tiny_config(optimizer="lamb"), optax.constant_schedule(1.0), 10)


def test_loss_with_label_smoothing_and_top_k():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0, -2.0, -3.0], [0.0, 0.0, 5.0, 0.0, 0.0, 0.0]])
    labels = jnp.array([1, 2])
    plain = steps.cross_entropy_loss(logits, labels, 0.0)
    np.testing.assert_allclose(plain, -jax.nn.log_softmax(logits)[jnp.arange(2), labels], rtol=1e-6)
    smoothed = steps.cross_entropy_loss(logits, labels, 0.6)
    expected = 0.4 * plain + 0.6 * -jax.nn.log_softmax(logits).mean(-1)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5)
    metrics = steps.classification_metrics(logits, labels)
    np.testing.assert_array_equal(metrics["top1"], [0.0, 1.0])
    np.testing.assert_array_equal(metrics["top5"], [1.0, 1.0])
    assert "top5" not in steps.classification_metrics(logits[:, :4], labels)


def test_batch_not_divisible_by_devices_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        parallel.check_batch_size(100, 8)
    parallel.check_batch_size(96, 8)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    config = tiny_config(dropout_rate=0.5, num_train_steps=30)
    built = run.build_run(config, tmp_path_factory.mktemp("unit"))
    return config, built, built.mesh


def test_train_step_learns_and_is_deterministic(tiny_setup):
    """Repeated steps on one batch drive its loss down; the same seed gives the same numbers."""
    config, built, mesh = tiny_setup
    batch = parallel.make_global_batch(next(input_pipeline.create_train_iterator(built.data)), mesh)

    def train():
        state = run.initial_state(built)
        step = parallel.jit_train_step(functools.partial(steps.train_step, learning_rate_fn=built.learning_rate_fn), mesh)
        losses = []
        for _ in range(30):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        return losses, state

    losses, state = train()
    assert int(state.step) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3]), losses
    again, _ = train()
    assert again == losses


def test_eval_step_ignores_masked_examples(tiny_setup):
    config, built, mesh = tiny_setup
    state = run.initial_state(built)
    batch = next(input_pipeline.create_train_iterator(built.data))
    eval_step = parallel.jit_eval_step(steps.eval_step, mesh)
    full = eval_step(state, parallel.make_global_batch({**batch, "mask": np.ones(8, bool)}, mesh))
    mask = np.array([True] * 4 + [False] * 4)
    garbage = {"image": np.where(mask[:, None, None, None], batch["image"], 1e3).astype(np.float32),
               "label": batch["label"], "mask": mask}  # fmt: skip
    half = eval_step(state, parallel.make_global_batch(garbage, mesh))
    first = eval_step(state, parallel.make_global_batch({k: v[:4] for k, v in batch.items()} | {"mask": np.ones(4, bool)},
                                                         parallel.create_mesh(jax.devices()[:1])))
    assert float(full["count"]) == 8 and float(half["count"]) == 4
    assert float(half["loss"]) == pytest.approx(float(first["loss"]), rel=1e-5)
    assert float(half["top1"]) == float(first["top1"])


def test_pmap_step_compiles_once(tiny_setup):
    """The state enters the pmap step placed as the step returns it: one trace and compile, not two."""
    config, built, mesh = tiny_setup
    traces = []

    def counted_step(state, batch, axis_name):
        traces.append(axis_name)
        return steps.train_step(state, batch, learning_rate_fn=built.learning_rate_fn, axis_name=axis_name)

    runner = parallel.compile_train_step(counted_step, mesh, "pmap")
    state = runner.to_run_layout(run.initial_state(built))
    batch = next(input_pipeline.create_train_iterator(built.data))
    for _ in range(3):
        state, metrics = runner.step(state, batch)
    assert traces == [parallel.PMAP_AXIS] and int(runner.to_canonical(state).step) == 3
