"""`python -m train.compress`: prune -> retrain -> share -> fine-tune through the
training program, on synthetic data, with the density spread by sensitivity; the file written holds
exactly the fine-tuned shared weights, and a second run resumes (reuses) the finished stages."""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GREY
from train_helpers import REPO, config_flags, tiny_config

import flax_squeezenet
from flax_squeezenet.cli import compress as compress_cli
from flax_squeezenet.compression import pruning
from train import compress as retrain


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """A saved 4-class, 1-channel SqueezeNet 1.1, as the tiny synthetic runs train."""
    module = flax_squeezenet.create_model("squeezenet1_1", num_classes=4, in_channels=1)
    params = module.init(jax.random.key(5), jnp.zeros((1, 20, 20, 1)))["params"]
    directory = tmp_path_factory.mktemp("source") / "model"
    return flax_squeezenet.save_pretrained(directory, {"params": params}, model="squeezenet1_1", num_classes=4,
                                           in_channels=1, preprocessing=GREY)  # fmt: skip


def test_stages_chain_their_models_and_set_their_keys(tmp_path):
    config = tiny_config(model_dir=str(tmp_path / "elsewhere"))
    config.prune_density = None  # the pruning keys (branch `prune`), as they read when pruning is off
    (share,) = retrain.pipeline_stages(config, "source", tmp_path, density=None, bits=5, layer_bits={"conv1": 8})
    assert (share.name, share.workdir, share.config.init_from) == ("share", tmp_path / "share", "source")
    assert (share.config.share_bits, dict(share.config.share_layer_bits), share.config.model_dir) == (5, {"conv1": 8}, None)

    prune, share = retrain.pipeline_stages(config, "source", tmp_path, density=0.3, bits=6)
    assert (prune.workdir, prune.config.init_from, prune.config.prune_density) == (tmp_path / "prune", "source", 0.3)
    assert prune.config.get("share_bits") is None and prune.config.model_dir is None
    assert share.config.init_from == str(tmp_path / "prune" / "model") and share.config.prune_density is None
    assert config.init_from is None and config.get("share_bits") is None, "the caller's config changed"


def _share_line(printed: str) -> str:
    (line,) = [line for line in printed.splitlines() if line.startswith("share: ")]
    return line


def _params(path):
    return flax_squeezenet.load_pretrained(path)[1]["params"]


@pytest.mark.slow
def test_pipeline_writes_the_fine_tuned_shared_weights_and_resumes(trained_model, tmp_path, capsys):
    output, workdir = tmp_path / "model.sqz", tmp_path / "work"
    overrides = config_flags(tiny_config(num_train_steps=6, eval_every_steps=6))
    argv = [str(trained_model), "--output", str(output), "--bits", "3", "--density", "0.5", "--density-plan",
            "sensitivity", "--workdir", str(workdir), "--config", str(REPO / "train/configs/default.py"),
            *overrides]  # fmt: skip
    assert retrain.main(argv) == 0
    printed = capsys.readouterr().out
    assert "sensitivity plan (other convs kept whole): " in printed
    assert f"prune: {workdir / 'prune' / 'model'}: eval top-1" in printed
    assert f"share: {workdir / 'share' / 'model'}: eval top-1" in printed
    assert f"wrote {output}: {output.stat().st_size:,} bytes" in printed
    trained, decoded = _params(workdir / "share" / "model"), _params(output)
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path)), trained, decoded
    )
    assert 0.3 < pruning.kernel_density(decoded) <= 0.5
    kernel = np.asarray(decoded["fire9"]["expand3x3"]["kernel"])
    assert np.unique(kernel[kernel != 0]).size <= 7
    first = output.read_bytes()

    assert retrain.main(argv) == 0
    assert _share_line(capsys.readouterr().out) == _share_line(printed), "the finished stage was not reused"
    assert output.read_bytes() == first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "fashion_mnist"], "the following arguments are required: --workdir"),
        (["--workdir", "WORK", "--config", "fashion_mnist", "--config.no_such_key=1"], "no_such_key"),
        (["--workdir", "WORK", "--config", "fashion_mnist", "--bits", "6", "--format", "net"], "8-bit"),
    ],
)
def test_bad_pipeline_arguments_are_one_line_errors_and_write_nothing(trained_model, tmp_path, capsys, extra, message):
    argv = [str(trained_model), "--output", str(tmp_path / "out.sqz"), *(a.replace("WORK", str(tmp_path / "w")) for a in extra)]
    try:
        assert retrain.main(argv) == 1
    except SystemExit as usage:  # argparse's own one-line usage error
        assert usage.code == 2
    error = capsys.readouterr().err
    assert message in error.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("extra", [["--retrain-workdir", "w", "--config", "fashion_mnist"], ["--config.batch_size=4"]])
def test_squeezenet_compress_asked_to_retrain_says_what_to_run(trained_model, tmp_path, capsys, extra):
    assert compress_cli.main([str(trained_model), "--output", str(tmp_path / "out.sqz"), *extra]) == 1
    error = capsys.readouterr().err
    assert "run python -m train.compress WEIGHTS --output FILE --workdir DIR --config PRESET" in error
    assert error.count("\n") == 1 and not any(tmp_path.iterdir())


def test_an_unwritable_output_is_refused_before_training(trained_model, tmp_path, capsys):
    argv = [str(trained_model), "--output", str(tmp_path / "missing" / "out.sqz"),
            "--workdir", str(tmp_path / "work"), "--config", "fashion_mnist"]  # fmt: skip
    assert retrain.main(argv) == 1
    assert "is not a writable directory" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_signal_during_a_stage_is_one_line_and_the_signals_exit_status(trained_model, tmp_path, capsys, monkeypatch):
    from train import run, trainer
    from train.signals import TrainingInterrupted

    def stopped(built):
        raise TrainingInterrupted(signal.SIGTERM, step=7)

    monkeypatch.setattr(run, "build_run", lambda config, workdir: (config, workdir))
    monkeypatch.setattr(trainer, "train_and_evaluate", stopped)
    argv = [str(trained_model), "--output", str(tmp_path / "out.sqz"), "--density", "0.5",
            "--workdir", str(tmp_path / "work"), "--config", "fashion_mnist"]  # fmt: skip
    assert retrain.main(argv) == 128 + signal.SIGTERM
    error = capsys.readouterr().err
    assert error == "python -m train.compress: prune stage stopped by SIGTERM at step 7; checkpoint saved, run the same command to resume\n"
    assert not (tmp_path / "out.sqz").exists()


def test_the_training_program_runs_as_a_module_from_the_checkout(trained_model, tmp_path):
    argv = [sys.executable, "-m", "train.compress", str(trained_model), "--output", str(tmp_path / "out.sqz"),
            "--workdir", str(tmp_path / "work"), "--config", "fashion_mnist", "--config.no_such_key=1"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "unknown config key 'no_such_key'" in done.stderr and done.stderr.count("\n") == 1, done.stderr
