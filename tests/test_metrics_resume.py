"""Metric files stay consistent across stops and resumes: one row per (step, split), none past the resume step."""

import csv
import json
import os
import shutil
import struct

import pytest
from train_helpers import tiny_config, train_in_process

from train import reporting


def log(workdir, rows, resume_step=None):
    """Open a writer on `workdir` (resuming from `resume_step`), write `rows` of (step, split, loss), close it."""
    writer = reporting.MetricWriter(workdir, resume_step=resume_step)
    for step, split, loss in rows:
        writer.write(step, split, {"loss": loss})
    writer.close()


def jsonl_keys(workdir):
    return [(row["step"], row["split"]) for row in map(json.loads, (workdir / reporting.METRICS_JSONL).open())]


def csv_rows(workdir):
    with open(workdir / reporting.METRICS_CSV, newline="") as f:
        header, *rows = list(csv.reader(f))
    assert header == ["step", "split", "name", "value"]
    return [(int(step), split, name, float(value)) for step, split, name, value in rows]


def test_resuming_drops_rows_logged_after_the_resume_step(tmp_path):
    log(tmp_path, [(2, "train", 1.0), (4, "train", 0.9), (4, "eval", 0.95), (6, "train", 0.8), (6, "eval", 0.85)])
    log(tmp_path, [(6, "train", 0.7), (6, "eval", 0.75)], resume_step=4)  # killed during eval at 6, resumed at 4
    assert jsonl_keys(tmp_path) == [(2, "train"), (4, "train"), (4, "eval"), (6, "train"), (6, "eval")]
    assert reporting.read_metrics(tmp_path)["eval"] == {4: {"loss": 0.95}, 6: {"loss": 0.75}}
    assert csv_rows(tmp_path) == [(2, "train", "loss", 1.0), (4, "train", "loss", 0.9), (4, "eval", "loss", 0.95),
                                  (6, "train", "loss", 0.7), (6, "eval", "loss", 0.75)]  # fmt: skip


def test_a_row_logged_twice_at_the_resume_step_is_kept_once_the_last(tmp_path):
    log(tmp_path, [(0, "pipeline", 5.0), (4, "train", 0.9), (4, "pipeline", 6.0), (4, "pipeline", 7.0)])
    log(tmp_path, [], resume_step=4)
    assert jsonl_keys(tmp_path) == [(0, "pipeline"), (4, "train"), (4, "pipeline")]
    assert reporting.read_metrics(tmp_path)["pipeline"][4] == {"loss": 7.0}
    assert [row[:2] for row in csv_rows(tmp_path)] == jsonl_keys(tmp_path)


def test_a_line_cut_off_by_a_kill_is_dropped_and_the_csv_rebuilt(tmp_path):
    log(tmp_path, [(2, "train", 1.0), (4, "train", 0.9)])
    with open(tmp_path / reporting.METRICS_JSONL, "a") as f:
        f.write('{"step": 6, "split": "tr')  # SIGKILL in the middle of a write
    with open(tmp_path / reporting.METRICS_CSV, "a") as f:
        f.write("4,train,lo")
    assert sorted(reporting.read_metrics(tmp_path)["train"]) == [2, 4]  # readable before any resume
    log(tmp_path, [(6, "train", 0.8)], resume_step=4)
    assert jsonl_keys(tmp_path) == [(2, "train"), (4, "train"), (6, "train")]
    assert csv_rows(tmp_path) == [(2, "train", "loss", 1.0), (4, "train", "loss", 0.9), (6, "train", "loss", 0.8)]


def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    log(tmp_path, [(2, "train", 1.0), (4, "train", 0.9)])
    path = tmp_path / reporting.METRICS_JSONL
    path.write_text(path.read_text().replace('"step": 2', '"step": "two"'))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"metrics.jsonl line 1 is not a metrics row"):
        reporting.MetricWriter(tmp_path, resume_step=4)
    assert path.read_bytes() == before  # nothing the user has is rewritten


def test_rewritten_files_follow_the_umask_and_leave_no_temporary_files(tmp_path):
    log(tmp_path, [(2, "train", 1.0), (4, "train", 0.9)])
    previous = os.umask(0o027)
    try:
        log(tmp_path, [], resume_step=2)
    finally:
        os.umask(previous)
    for name in (reporting.METRICS_JSONL, reporting.METRICS_CSV):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640
    assert not list(tmp_path.glob(".*tmp"))


def test_consistent_files_are_left_untouched(tmp_path):
    log(tmp_path, [(2, "train", 1.0), (4, "eval", 0.9)])
    stamps = {name: (tmp_path / name).stat().st_mtime_ns for name in (reporting.METRICS_JSONL, reporting.METRICS_CSV)}
    inodes = {name: (tmp_path / name).stat().st_ino for name in stamps}
    log(tmp_path, [], resume_step=4)
    assert {name: (tmp_path / name).stat().st_ino for name in stamps} == inodes
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in stamps} == stamps


def event_records(path):
    """The serialized Event protos of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    data, records, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        records.append(data[offset + 12 : offset + 12 + length])
        offset += 12 + length + 4
    return records


def test_tensorboard_is_told_to_purge_events_after_the_resume_step(tmp_path):
    from tensorboardX.proto import event_pb2

    log(tmp_path, [(2, "train", 1.0)])
    log(tmp_path, [(4, "train", 0.9)], resume_step=2)
    files = sorted((tmp_path / reporting.TENSORBOARD_DIR).glob("events.out.tfevents.*"), key=os.path.getmtime)
    events = [event_pb2.Event.FromString(record) for record in event_records(files[-1])]
    starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [3]  # TensorBoard drops the earlier files' events from step 3 on


@pytest.mark.slow
def test_a_run_killed_after_logging_its_eval_resumes_without_duplicate_rows(tmp_path):
    config = tiny_config()
    train_in_process(config, tmp_path)
    # As if SIGKILL came during the final eval: step 12's rows were logged, its checkpoint never written.
    shutil.rmtree(tmp_path / "checkpoints" / "12")
    train_in_process(config, tmp_path)
    keys = jsonl_keys(tmp_path)
    assert len(keys) == len(set(keys))
    assert sorted(step for step, split in keys if split == "train") == [2, 4, 6, 8, 10, 12]
    assert sorted(step for step, split in keys if split == "eval") == [6, 12]
    assert len(csv_rows(tmp_path)) == sum(len(row) - 2 for row in map(json.loads, open(tmp_path / "metrics.jsonl")))
