"""What the training program does with bad input and failures: one clear line, and nothing lost.

Each test fails on the code before issue #10's fixes: a changed config on resume, files written
before validation, tracebacks for bad flags and paths, damaged checkpoints, a NaN learning rate,
a full disk. Also: evaluating and resuming a fine-tuned run do not read the weights it started from.
"""

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest
from train_helpers import REPO, subprocess_env, tiny_config, train_command, train_in_process

import flax_squeezenet
from train import checkpoints, evaluate, run, save_model, trainer, workdir

CONFIG = tiny_config(num_train_steps=8, eval_every_steps=8)
# Python's writers say "File too large"; TensorStore's give only the code: either names EFBIG.
FILE_TOO_LARGE = (os.strerror(errno.EFBIG), f"os_error_code='{errno.EFBIG}'")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("finished")
    train_in_process(CONFIG, directory)
    return directory


@pytest.fixture
def copied_run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _snapshot(directory):
    return {p.relative_to(directory): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def test_changed_config_is_refused_naming_the_keys_and_touching_nothing(copied_run):
    before = _snapshot(copied_run)
    changed = tiny_config(num_train_steps=8, eval_every_steps=8, model="squeezenet1_0", image_size=24, seed=1)
    with pytest.raises(workdir.ConfigMismatchError, match=r"image_size: 20 -> 24, model: 'squeezenet1_1' -> 'squeezenet1_0', seed: 0 -> 1"):
        train_in_process(changed, copied_run)
    assert _snapshot(copied_run) == before


def test_resumable_keys_may_change_after_the_last_run_was_sigkilled(copied_run):
    killed = _hold_lock(copied_run)  # the OS releases a SIGKILLed run's workdir lock
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    longer = tiny_config(num_train_steps=10, eval_every_steps=8, learning_rate=1e-4, log_every_steps=1)
    assert train_in_process(longer, copied_run)["step"] == 10


def test_checkpoint_of_other_shapes_is_refused_not_set_aside(copied_run):
    (copied_run / "config.json").unlink()  # only the checkpoint's own shapes can tell
    with pytest.raises(checkpoints.CheckpointMismatchError, match="classifier"):
        train_in_process(tiny_config(num_train_steps=8, eval_every_steps=8, synthetic_num_classes=3), copied_run)
    assert sorted(p.name for p in (copied_run / "checkpoints").iterdir()) == ["4", "8"]
    assert not (copied_run / "checkpoints_unreadable").exists()


@pytest.mark.parametrize("key, value", [("learning_rate", float("nan")), ("model", "squeezenet2"), ("batch_size", 0),
                                        ("dropout_rate", 1.5), ("keep_checkpoints", 0)])  # fmt: skip
def test_bad_config_is_refused_before_anything_is_written(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        train_in_process(tiny_config(**{key: value}), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_unusable_workdir_or_model_dir_is_refused_before_training(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file"):
        train_in_process(CONFIG, a_file)
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a saved model"):
        train_in_process(tiny_config(model_dir=str(others)), tmp_path / "run")
    assert not (tmp_path / "run").exists() and (others / "notes.txt").read_text() == "mine"


def test_save_model_refuses_a_folder_of_other_files(finished_run, tmp_path, capsys):
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    assert save_model.main(["--workdir", str(finished_run), "--output", str(others)]) == 2
    assert "not a saved model" in capsys.readouterr().err
    assert [p.name for p in others.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("damaged", ["state/_METADATA", "state/manifest.ocdbt"])
def test_damaged_checkpoint_is_one_line_for_evaluate_and_set_aside_on_resume(copied_run, damaged, capsys):
    (copied_run / "checkpoints/8" / damaged).unlink()
    assert evaluate.main(["--workdir", str(copied_run), "--step", "8"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "checkpoints/8 is unreadable" in error
    assert train_in_process(CONFIG, copied_run)["step"] == 8  # redoes steps 5-8 from step 4
    assert (copied_run / "checkpoints_unreadable/8").is_dir()


def test_nan_loss_before_any_checkpoint_says_so(tmp_path):
    broken = tiny_config(learning_rate=1e30, schedule="constant", warmup_steps=0, checkpoint_every_steps=100,
                         eval_every_steps=100)  # fmt: skip
    with pytest.raises(trainer.NonFiniteLossError, match="No checkpoint had been saved yet") as raised:
        train_in_process(broken, tmp_path)
    assert "None" not in str(raised.value)


def test_no_room_for_a_checkpoint_stops_before_writing_it(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 0))
    with pytest.raises(checkpoints.CheckpointWriteError, match="not enough disk space"):
        train_in_process(CONFIG, tmp_path)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.slow
def test_failed_checkpoint_write_stops_in_one_line_and_leaves_no_temporary_directory(tmp_path):
    process = subprocess.run(train_command(tmp_path, CONFIG), env=subprocess_env(), cwd=REPO, capture_output=True,
                             text=True, timeout=600, preexec_fn=_limit_file_size)  # fmt: skip
    assert process.returncode == 2, process.stderr[-3000:]
    reported = [line for line in process.stderr.splitlines() if "CheckpointWriteError: writing a checkpoint in" in line]
    assert len(reported) == 1  # Orbax's writer threads may still print after it
    assert any(words in reported[0] for words in FILE_TOO_LARGE), reported[0]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == []


@pytest.mark.slow
@pytest.mark.parametrize("flag, expected", [("--config.foo=1", "unknown config key 'foo'"),
                                            ("--config.batch_size=abc", "--config.batch_size=abc"),
                                            ("--config=nope", "unknown config 'nope'")])  # fmt: skip
def test_bad_flags_are_one_line_without_traceback(tmp_path, flag, expected):
    command = [*train_command(tmp_path / "run", CONFIG), flag]
    process = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    assert "Traceback" not in process.stderr and expected in process.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_fine_tuned_run_evaluates_and_resumes_without_its_init_from(finished_run, tmp_path, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(finished_run / "model", weights)
    fine_tuned = tmp_path / "fine_tuned"
    train_in_process(tiny_config(num_train_steps=4, eval_every_steps=4, init_from=str(weights)), fine_tuned)
    weights.rename(tmp_path / "moved_away")
    assert evaluate.main(["--workdir", str(fine_tuned), "--step", "latest"]) == 0
    assert '"step": 4' in capsys.readouterr().out
    longer = tiny_config(num_train_steps=6, eval_every_steps=4, init_from=str(weights))
    assert train_in_process(longer, fine_tuned)["step"] == 6
    _, variables = flax_squeezenet.load_pretrained(fine_tuned / "model")
    assert variables["params"]["classifier"]["kernel"].shape[-1] == 4
    assert run.build_run(longer, fine_tuned).config.init_from == str(weights)


def test_missing_init_from_fails_before_the_data_is_read(tmp_path, monkeypatch):
    def read_data(config):
        raise AssertionError("the data was read before init_from was checked")

    monkeypatch.setattr(run.input_pipeline, "open_data", read_data)
    config = tiny_config(num_train_steps=4, init_from=str(tmp_path / "no_such_model"))
    with pytest.raises(FileNotFoundError, match="no_such_model is neither a pretrained name"):
        train_in_process(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


HOLD_LOCK = """
import pathlib, sys, time
from train import workdir
with workdir.locked(pathlib.Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def _hold_lock(directory) -> subprocess.Popen:
    """A process holding `directory`'s workdir lock, started once it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], env=subprocess_env(), cwd=REPO,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_second_run_in_a_held_workdir_is_refused_touching_nothing(copied_run, tmp_path, capsys):
    holder = _hold_lock(copied_run)
    try:
        before = _files(copied_run)
        with pytest.raises(workdir.WorkdirInUseError, match=rf"in use by pid {holder.pid} on .* \(started "):
            train_in_process(tiny_config(num_train_steps=10, eval_every_steps=10), copied_run)
        assert save_model.main(["--workdir", str(copied_run), "--output", str(tmp_path / "saved")]) == 2
        assert f"in use by pid {holder.pid}" in capsys.readouterr().err
        assert _files(copied_run) == before and not (tmp_path / "saved").exists()
    finally:
        holder.kill()
        holder.wait()

