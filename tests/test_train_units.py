"""Configs, optimiser schedules, losses and the train/eval steps on one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import configs, input_pipeline, optim, parallel, steps, trainer
from train.__main__ import resolve_config_flag
from train_helpers import tiny_config


@pytest.mark.parametrize("name", configs.PRESETS)
def test_presets_build_and_resolve(name):
    config = configs.get_preset(name)
    assert config.dataset and config.model and config.batch_size > 0
    assert configs.resolve_config_path(name).is_file()


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="fashion_mnist, cifar10, imagenet"):
        configs.resolve_config_path("mnist_big")
    with pytest.raises(ValueError, match="unknown preset"):
        configs.get_preset("mnist_big")


def test_config_flag_accepts_presets_files_and_defaults(tmp_path):
    preset = str(configs.CONFIG_DIR / "cifar10.py")
    assert resolve_config_flag(["prog", "--config", "cifar10", "--config.seed=1"]) == ["prog", "--config", preset, "--config.seed=1"]
    assert resolve_config_flag(["prog", "--config=cifar10"]) == ["prog", "--config=" + preset]
    assert resolve_config_flag(["prog", "--workdir=x"])[1] == "--config=" + str(configs.CONFIG_DIR / "fashion_mnist.py")
    custom = tmp_path / "mine.py"
    custom.write_text("from train.configs import default\nget_config = default.get_config\n")
    assert resolve_config_flag(["prog", "--config", str(custom)])[2] == str(custom)


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


def test_gradient_clipping_bounds_the_update():
    config = tiny_config(optimizer="sgd", momentum=0.0, grad_clip_norm=1.0, learning_rate=1.0)
    tx = optim.create_optimizer(config, optax.constant_schedule(1.0))
    params = {"w": jnp.zeros(4)}
    updates, _ = tx.update({"w": jnp.full(4, 100.0)}, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.create_optimizer(tiny_config(optimizer="lamb"), optax.constant_schedule(1.0))


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
def tiny_setup():
    config = tiny_config(dropout_rate=0.5)
    info = input_pipeline.dataset_info(config)
    mesh = parallel.create_mesh()
    return config, info, mesh


def test_train_step_learns_and_is_deterministic(tiny_setup):
    """Repeated steps on one batch drive its loss down; the same seed gives the same numbers."""
    config, info, mesh = tiny_setup
    batch = parallel.make_global_batch(next(input_pipeline.create_train_iterator(config)), mesh)

    def run():
        state, lr = trainer.build_state(config, info, 30, mesh)
        step = parallel.jit_train_step(functools.partial(steps.train_step, learning_rate_fn=lr), mesh)
        losses = []
        for _ in range(30):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        return losses, state

    losses, state = run()
    assert int(state.step) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3]), losses
    again, _ = run()
    assert again == losses


def test_eval_step_ignores_masked_examples(tiny_setup):
    config, info, mesh = tiny_setup
    state, _ = trainer.build_state(config, info, 1, mesh)
    batch = next(input_pipeline.create_train_iterator(config))
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
