"""Two processes on localhost (CPU, gloo collectives) train like one process with the same global batch."""

import socket
import subprocess

import pytest
from train_helpers import REPO, run_training, subprocess_env, tiny_config, train_command

from train import reporting

CONFIG = tiny_config(num_train_steps=6, log_every_steps=1, eval_every_steps=6, checkpoint_every_steps=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single = run_training(tmp_path / "single", CONFIG)
    assert single.returncode == 0, single.stderr[-3000:]

    config = CONFIG.copy_and_resolve_references()
    config.distributed = True
    config.coordinator_address = f"localhost:{_free_port()}"
    config.num_processes = 2
    workdir = tmp_path / "two"
    processes = []
    for process_id in range(2):
        config.process_id = process_id
        processes.append(subprocess.Popen(train_command(workdir, config), env=subprocess_env(1), cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]

    one, two = reporting.read_metrics(tmp_path / "single"), reporting.read_metrics(workdir)
    assert sorted(two["train"]) == list(range(1, 7))
    for step in range(1, 7):
        assert two["train"][step]["loss"] == pytest.approx(one["train"][step]["loss"], rel=1e-5), step
    assert two["eval"][6]["top1"] == pytest.approx(one["eval"][6]["top1"])
    assert two["eval"][6]["loss"] == pytest.approx(one["eval"][6]["loss"], rel=1e-5)
    assert not (workdir / "model").exists()  # multi-process runs save the model afterwards (train.save_model)
    data_states = sorted(p.name for p in (workdir / "checkpoints" / "6" / "data").glob("process_*.json"))
    assert data_states == ["process_0-of-2.json", "process_1-of-2.json"]
