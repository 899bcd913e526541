"""Killed and restarted runs end with the same parameters as an uninterrupted run (bitwise on CPU).

Each run is `python -m train` in a subprocess: the uninterrupted reference; a run killed with
SIGKILL once a checkpoint exists, restarted, stopped with SIGTERM (which saves and exits 143),
and restarted again to the end.
"""

import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from train_helpers import REPO, run_training, subprocess_env, tiny_config, train_command

import flax_squeezenet

CONFIG = tiny_config(num_train_steps=60, checkpoint_every_steps=5, eval_every_steps=30, log_every_steps=5,
                     dropout_rate=0.5, augment="crop_flip")  # fmt: skip


def _saved_steps(workdir):
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _start_and_signal(workdir, signum, after_step: int, timeout: float = 240) -> subprocess.CompletedProcess:
    """Start a run, send `signum` once a checkpoint past `after_step` is complete, wait for the end."""
    process = subprocess.Popen(train_command(workdir, CONFIG), env=subprocess_env(), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while not any(step > after_step for step in _saved_steps(workdir)):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _final_params(workdir):
    _, variables = flax_squeezenet.load_pretrained(workdir / "model")
    return variables["params"]


@pytest.mark.slow
def test_sigkill_and_sigterm_then_resume_match_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    done = run_training(reference, CONFIG)
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    killed = _start_and_signal(interrupted, signal.SIGKILL, after_step=0)
    assert killed.returncode == -signal.SIGKILL
    killed_at = max(_saved_steps(interrupted))
    assert killed_at < CONFIG.num_train_steps, "the run ended before the kill; nothing was tested"

    stopped = _start_and_signal(interrupted, signal.SIGTERM, after_step=killed_at)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "stopped by SIGTERM" in stopped.stderr and "resumed from the checkpoint" in stopped.stderr
    stopped_at = max(_saved_steps(interrupted))
    assert killed_at < stopped_at < CONFIG.num_train_steps
    assert not (interrupted / "model").exists()

    resumed = run_training(interrupted, CONFIG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from the checkpoint at step {stopped_at}" in resumed.stderr
    expected, actual = _final_params(reference), _final_params(interrupted)
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path)), expected, actual
    )
