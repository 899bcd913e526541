"""Helpers for the training tests: tiny configs and running code in a fresh Python process.

Multi-device and multi-process tests need JAX initialised with other settings than this test
session (XLA_FLAGS is read once, when JAX starts), so they run in subprocesses.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import ml_collections

from train import run, trainer
from train.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """A seconds-long run: SqueezeNet 1.1 on 20x20 synthetic images of 4 learnable classes."""
    config = default.get_config()
    config.dataset = "synthetic"
    config.image_size = 20
    config.channels = 1
    config.augment = "none"
    config.synthetic_num_classes = 4
    config.synthetic_train_examples = 64
    config.synthetic_eval_examples = 16
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 12
    config.learning_rate = 3e-4
    config.warmup_steps = 2
    config.dropout_rate = 0.0
    config.label_smoothing = 0.0
    config.log_every_steps = 2
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 4
    config.measure_pipeline_throughput = False
    config.prefetch = 1
    for key, value in overrides.items():
        config[key] = value
    return config


def train_in_process(config: ml_collections.ConfigDict, workdir) -> dict:
    """`trainer.train_and_evaluate` of the run `config` describes in `workdir`, in this process."""
    return trainer.train_and_evaluate(run.build_run(config, workdir))


def config_flags(config: ml_collections.ConfigDict) -> list[str]:
    """`--config.key=value` flags reproducing `config` on top of the default config."""
    reference = default.get_config()
    return [f"--config.{k}={v}" for k, v in config.items() if v is not None and reference[k] != v]


def subprocess_env(num_devices: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def train_command(workdir, config: ml_collections.ConfigDict) -> list[str]:
    """The `python -m train` command line that runs `config` in `workdir`."""
    return [sys.executable, "-m", "train", "--workdir", str(workdir),
            "--config", str(REPO / "train/configs/default.py"), *config_flags(config)]  # fmt: skip


def run_training(workdir, config, num_devices: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m train` on `num_devices` fake CPU devices; the completed process (not checked)."""
    return subprocess.run(train_command(workdir, config), env=subprocess_env(num_devices), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def run_python(code: str, num_devices: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -c code` with `num_devices` fake CPU devices; the completed process (not checked)."""
    return subprocess.run([sys.executable, "-c", code], env=subprocess_env(num_devices), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
