"""A checkpoint written on 8 devices restores on 1, and one written on 1 restores on 8."""

import jax
import numpy as np
import pytest
from train_helpers import run_training, tiny_config, train_in_process

import flax_squeezenet
from train import reporting


def _config(num_train_steps: int):
    # A constant learning rate, so stopping at 2 and 4 steps does not change the schedule; SGD, as
    # Adam's normalised updates turn rounding differences in tiny gradients into full steps.
    return tiny_config(num_train_steps=num_train_steps, schedule="constant", warmup_steps=0, optimizer="sgd",
                       learning_rate=0.02, checkpoint_every_steps=2, eval_every_steps=100, batch_size=16, log_every_steps=1)  # fmt: skip


@pytest.mark.slow
def test_checkpoints_move_between_8_and_1_devices(tmp_path):
    workdir = tmp_path / "moving"
    for num_train_steps, num_devices, resumed_from in [(2, 8, None), (4, 1, 2), (6, 8, 4)]:
        process = run_training(workdir, _config(num_train_steps), num_devices=num_devices)
        assert process.returncode == 0, process.stderr[-3000:]
        assert f"on {num_devices} devices" in process.stderr
        if resumed_from is not None:
            assert f"resumed from the checkpoint at step {resumed_from}" in process.stderr

    reference = train_in_process(_config(6), tmp_path / "reference")
    _, moved = flax_squeezenet.load_pretrained(workdir / "model")
    _, expected = flax_squeezenet.load_pretrained(reference["model"])
    # Sums over 8 devices round differently from sums on 1: equal up to float32 rounding.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4), moved, expected)
    moved_losses = {step: m["loss"] for step, m in reporting.read_metrics(workdir)["train"].items()}
    expected_losses = {step: m["loss"] for step, m in reporting.read_metrics(tmp_path / "reference")["train"].items()}
    assert sorted(moved_losses) == list(range(1, 7))
    assert moved_losses == pytest.approx(expected_losses, rel=1e-4)
