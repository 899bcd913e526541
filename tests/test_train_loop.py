"""The training loop end to end on tiny synthetic data, in this process (one device)."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest
from train_helpers import tiny_config, train_in_process

import flax_squeezenet
from flax_squeezenet.weights.pretrained import input_convention
from train import checkpoints, evaluate, input_pipeline, reporting, run, save_model, trainer


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 12-step run: checkpoints every 4 steps, eval at 6 and 12."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config(measure_pipeline_throughput=True)
    result = train_in_process(config, workdir)
    return config, workdir, result


def test_run_writes_metrics_plot_checkpoints_and_model(finished_run):
    config, workdir, result = finished_run
    assert result["step"] == 12
    metrics = reporting.read_metrics(workdir)
    assert sorted(metrics["train"]) == [2, 4, 6, 8, 10, 12]
    assert sorted(metrics["eval"]) == [6, 12]
    assert {"loss", "top1", "learning_rate", "images_per_sec", "grad_norm"} <= set(metrics["train"][12])
    assert "top5" not in metrics["train"][12]  # 4 classes
    assert metrics["pipeline"][0]["images_per_sec"] > 0
    assert result["eval"] == pytest.approx(metrics["eval"][12])
    assert (workdir / "metrics.csv").read_text().startswith("step,split,name,value")
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 12
    manager = checkpoints.create_checkpoint_manager(workdir / "checkpoints", keep=config.keep_checkpoints, read_only=True)
    assert 12 in manager.all_steps() and manager.latest_step() == 12
    assert manager.best_step() in (6, 12)


def test_saved_model_loads_with_the_same_logits(finished_run):
    config, workdir, result = finished_run
    module, variables = flax_squeezenet.load_pretrained(result["model"])
    state, _ = run.restore_state(run.build_run(config, workdir), 12)
    images = next(input_pipeline.create_eval_batches(config))["image"]
    expected = state.apply_fn({"params": state.params}, images)
    np.testing.assert_allclose(module.apply(variables, images), expected, rtol=1e-6, atol=1e-6)
    assert module.num_classes == 4 and module.in_channels == 1
    p = input_pipeline.open_data(config).settings.preprocessing
    convention = input_convention(result["model"])
    assert (convention.channel_order, convention.crop_size, convention.mean) == ("L", p.image_size, p.mean)


def test_evaluate_cli_reports_the_final_eval(finished_run, capsys):
    config, workdir, result = finished_run
    assert evaluate.main(["--workdir", str(workdir), "--step", "12"]) == 0
    reported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert reported["step"] == 12
    assert reported["top1"] == pytest.approx(result["eval"]["top1"])
    assert reported["loss"] == pytest.approx(result["eval"]["loss"], rel=1e-5)


def test_save_model_cli_writes_the_chosen_step(finished_run, tmp_path):
    config, workdir, result = finished_run
    assert save_model.main(["--workdir", str(workdir), "--step", "latest", "--output", str(tmp_path / "out")]) == 0
    _, saved = flax_squeezenet.load_pretrained(tmp_path / "out")
    _, final = flax_squeezenet.load_pretrained(result["model"])
    jax.tree.map(np.testing.assert_array_equal, saved, final)
    assert save_model.main(["--workdir", str(workdir), "--step", "5"]) == 2


def test_rerun_of_a_finished_run_resumes_at_the_end(finished_run):
    config, workdir, result = finished_run
    again = train_in_process(config, workdir)
    assert again["step"] == 12 and again["train"] == {}


def _copy_run(finished_run, tmp_path):
    config, workdir, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return config, copy


def test_corrupt_latest_checkpoint_falls_back_to_previous(finished_run, tmp_path, caplog):
    config, workdir = _copy_run(finished_run, tmp_path)
    for path in (workdir / "checkpoints/12/state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    built = run.build_run(config, workdir)
    manager = checkpoints.create_checkpoint_manager(workdir / "checkpoints", keep=3)
    with caplog.at_level(logging.WARNING, logger="train.checkpoints"):
        restored = checkpoints.restore_latest_good(
            manager, built.abstract_state, input_pipeline.create_train_iterator(built.data)
        )
    assert int(restored.step) == 8
    assert "step 12 cannot be restored" in caplog.text
    assert (workdir / "checkpoints_unreadable/12").is_dir() and 12 not in manager.all_steps()
    manager.close()
    # The run then redoes steps 9-12 and saves a good step 12.
    assert train_in_process(config, workdir)["step"] == 12


def test_nan_loss_stops_without_saving_a_broken_state(finished_run, tmp_path):
    config, workdir = _copy_run(finished_run, tmp_path)
    broken = tiny_config(num_train_steps=20, learning_rate=1e30, warmup_steps=0, schedule="constant")
    with pytest.raises(trainer.NonFiniteLossError, match="last good checkpoint \\(step 12\\)"):
        train_in_process(broken, workdir)
    manager = checkpoints.create_checkpoint_manager(workdir / "checkpoints", keep=3, read_only=True)
    assert manager.latest_step() == 12


def test_fine_tuning_starts_from_saved_backbone_with_a_new_head(finished_run, tmp_path):
    config, workdir, result = finished_run
    new_task = tiny_config(init_from=result["model"], synthetic_num_classes=3)
    state = run.initial_state(run.build_run(new_task, tmp_path))
    _, saved = flax_squeezenet.load_pretrained(result["model"])
    assert state.params["classifier"]["kernel"].shape[-1] == 3
    np.testing.assert_array_equal(state.params["fire9"]["expand3x3"]["kernel"], saved["params"]["fire9"]["expand3x3"]["kernel"])


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="no_such_dataset"):
        train_in_process(tiny_config(dataset="no_such_dataset"), tmp_path)
