"""Weights and workdirs at URLs (`gs://...`) through `etils.epath`, on an in-memory fake bucket.

Real buckets are not reachable from the test machines: `fake_bucket` registers an fsspec
in-memory filesystem as the `gs://` backend epath uses when TensorFlow is absent. Like an object
store it cannot append to a file. Orbax writes a `gs://` checkpoint's arrays with TensorStore's own
GCS client, which no offline fake serves: the training test keeps the checkpoints in a local
directory (`bucket_checkpoints`) and everything else of the workdir in the fake bucket.
"""

from __future__ import annotations

import io
import logging

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from etils.epath import backend, gpath
from fsspec.implementations.memory import MemoryFileSystem
from tensorboardX import record_writer
from train_helpers import tiny_config, train_in_process

from flax_squeezenet import load_pretrained, save_pretrained, squeezenet1_1
from flax_squeezenet.storage import files
from flax_squeezenet.weights import pretrained
from train import checkpoints, reporting
from train.evaluate import evaluate_checkpoint


class FakeBucketFileSystem(MemoryFileSystem):
    """`gs://bucket/key` objects in memory; appending is refused, as object stores refuse it."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs: list = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        path = path.strip("/")
        return "/" + path if path else ""

    def glob(self, path, **kwargs):
        return [found.lstrip("/") for found in super().glob(path, **kwargs)]

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError(f"an object store cannot append to {path}")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def fake_bucket(monkeypatch):
    """`gs://bucket/` served from memory for this test, emptied afterwards."""
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(FakeBucketFileSystem, "store", {})
    monkeypatch.setattr(FakeBucketFileSystem, "pseudo_dirs", [""])
    for protocol in FakeBucketFileSystem.protocol:
        fsspec.register_implementation(protocol, FakeBucketFileSystem, clobber=True)
    FakeBucketFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()
    yield epath.Path("gs://bucket")
    backend.fsspec_backend._get_filesystem.cache_clear()
    FakeBucketFileSystem.clear_instance_cache()


def test_a_url_stays_a_url_and_a_local_path_stays_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(files.user_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert files.user_path("runs/a") == tmp_path / "runs" / "a"
    with pytest.raises(ValueError, match="ftp://host/model: expected a local path or a gs://"):
        files.user_path("ftp://host/model")


def test_atomic_file_uploads_whole_or_not_at_all(fake_bucket):
    target = fake_bucket / "dir" / "config.json"
    with files.atomic_file(target) as temporary:
        temporary.write_text("first")
    with pytest.raises(RuntimeError), files.atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("failed while writing")
    assert target.read_text() == "first"
    assert [path.name for path in target.parent.iterdir()] == ["config.json"]


def _variables():
    return squeezenet1_1(num_classes=5).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("format", ["orbax", "safetensors"])
def test_save_and_load_pretrained_in_a_bucket(fake_bucket, format):
    variables = _variables()
    saved = save_pretrained("gs://bucket/models/five", variables, model="squeezenet1_1", num_classes=5, format=format)
    assert str(saved) == "gs://bucket/models/five"
    assert [path.name for path in (fake_bucket / "models").iterdir()] == ["five"]
    again = save_pretrained("gs://bucket/models/five", variables, model="squeezenet1_1", num_classes=5, format=format)
    assert [path.name for path in (fake_bucket / "models").iterdir()] == ["five"]
    module, loaded = load_pretrained(again)
    assert module.num_classes == 5
    for expected, got in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(expected), np.asarray(got))


def test_a_failed_save_in_a_bucket_keeps_the_old_model(fake_bucket, monkeypatch):
    variables = _variables()
    save_pretrained("gs://bucket/model", variables, model="squeezenet1_1", num_classes=5)
    before = {key: bytes(value.getvalue()) for key, value in FakeBucketFileSystem.store.items()}

    upload = files.copy_tree

    def upload_then_fail(source, destination):
        upload(source, destination)
        raise OSError("network down")

    with monkeypatch.context() as patch, pytest.raises(OSError, match="network down"):
        patch.setattr(files, "copy_tree", upload_then_fail)
        zeros = jax.tree.map(jnp.zeros_like, variables)
        save_pretrained("gs://bucket/model", zeros, model="squeezenet1_1", num_classes=5)
    after = {key: bytes(value.getvalue()) for key, value in FakeBucketFileSystem.store.items()}
    assert after == before
    _, loaded = load_pretrained("gs://bucket/model")
    np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"], variables["params"]["conv1"]["kernel"])


def test_save_pretrained_refuses_a_bucket_directory_of_other_files(fake_bucket):
    (fake_bucket / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="gs://bucket/notes"):
        save_pretrained("gs://bucket/notes", _variables(), model="squeezenet1_1", num_classes=5)
    assert (fake_bucket / "notes" / "todo.txt").read_text() == "keep me"


def test_a_damaged_checkpoint_in_a_bucket_is_named_by_its_url(fake_bucket):
    save_pretrained("gs://bucket/model", _variables(), model="squeezenet1_1", num_classes=5)
    (fake_bucket / "model" / "metadata.json").write_text("{not json")
    with pytest.raises(pretrained.DamagedCheckpointError, match=r"^gs://bucket/model/metadata.json is not valid JSON"):
        load_pretrained("gs://bucket/model")


def test_load_pretrained_names_a_missing_url(fake_bucket):
    with pytest.raises(FileNotFoundError, match="gs://bucket/absent"):
        load_pretrained("gs://bucket/absent")


class EventFileInBucket:
    """A TensorBoard event file written through epath, uploaded whole on each flush."""

    def __init__(self, path: str):
        self.path = epath.Path(path)
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class EventFilesInBucket:
    """tensorboardX's writer factory for `gs://` (its own one needs google-cloud-storage and a real bucket)."""

    def open(self, path: str) -> EventFileInBucket:
        return EventFileInBucket(path)

    def directory_check(self, path: str) -> None:
        del path  # object stores need no directories


@pytest.fixture
def bucket_checkpoints(fake_bucket, tmp_path, monkeypatch):
    """Checkpoint managers for `gs://bucket/...` directories keep their files under `tmp_path` instead."""
    create = checkpoints.create_checkpoint_manager

    def create_locally(directory, **kwargs):
        return create(tmp_path / str(directory).removeprefix("gs://"), **kwargs)

    monkeypatch.setattr(checkpoints, "create_checkpoint_manager", create_locally)
    monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs", EventFilesInBucket())
    return tmp_path / "bucket" / "run" / "checkpoints"


def test_a_run_in_a_bucket_trains_resumes_and_evaluates(fake_bucket, bucket_checkpoints, caplog):
    every_two_steps = {"eval_every_steps": 2, "checkpoint_every_steps": 2}
    first = train_in_process(tiny_config(num_train_steps=2, **every_two_steps), "gs://bucket/run")
    assert first["model"] == "gs://bucket/run/model"
    run = fake_bucket / "run"
    assert {path.name for path in run.iterdir()} == {
        "config.json", "metrics.jsonl", "metrics.csv", "tensorboard", "curves.png", "model"}  # fmt: skip
    assert sorted(path.name for path in bucket_checkpoints.iterdir()) == ["2"]

    with caplog.at_level(logging.INFO, logger="train.trainer"):
        resumed = train_in_process(tiny_config(num_train_steps=4, **every_two_steps), "gs://bucket/run")
    assert "resumed from the checkpoint at step 2" in caplog.text
    assert resumed["step"] == 4
    assert sorted(path.name for path in bucket_checkpoints.iterdir()) == ["2", "4"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [(row["step"], row["split"]) for row in reporting.read_rows(run / "metrics.jsonl")] == [
        (2, "train"), (2, "eval"), (4, "train"), (4, "eval")]  # fmt: skip
    assert len(lines) == 4
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert any((run / "tensorboard").iterdir())

    evaluation = evaluate_checkpoint("gs://bucket/run", step="latest")
    assert evaluation["step"] == 4
    assert evaluation["top1"] == pytest.approx(resumed["eval"]["top1"])
    module, variables = load_pretrained("gs://bucket/run/model")
    assert module.num_classes == 4


def test_a_changed_config_in_a_bucket_workdir_is_refused(fake_bucket, bucket_checkpoints):
    from train.workdir import ConfigMismatchError

    train_in_process(tiny_config(num_train_steps=2, eval_every_steps=2), "gs://bucket/run")
    saved = (fake_bucket / "run" / "config.json").read_text()
    with pytest.raises(ConfigMismatchError, match="seed"):
        train_in_process(tiny_config(num_train_steps=2, eval_every_steps=2, seed=7), "gs://bucket/run")
    assert (fake_bucket / "run" / "config.json").read_text() == saved
