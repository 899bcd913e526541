"""Weights and workdirs at URLs (`gs://...`) through `etils.epath`, on an in-memory fake bucket.

Real buckets are not reachable from the test machines: `fake_bucket` registers an fsspec
in-memory filesystem as the `gs://` backend epath uses when TensorFlow is absent. Like an object
store it cannot append to a file.
"""

from __future__ import annotations

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath
from etils.epath import backend, gpath
from fsspec.implementations.memory import MemoryFileSystem

from flax_squeezenet import files, load_pretrained, save_pretrained, squeezenet1_1


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
        save_pretrained("gs://bucket/model", jax.tree.map(jnp.zeros_like, variables), model="squeezenet1_1", num_classes=5)
    after = {key: bytes(value.getvalue()) for key, value in FakeBucketFileSystem.store.items()}
    assert after == before
    _, loaded = load_pretrained("gs://bucket/model")
    np.testing.assert_array_equal(loaded["params"]["conv1"]["kernel"], variables["params"]["conv1"]["kernel"])


def test_save_pretrained_refuses_a_bucket_directory_of_other_files(fake_bucket):
    (fake_bucket / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="gs://bucket/notes"):
        save_pretrained("gs://bucket/notes", _variables(), model="squeezenet1_1", num_classes=5)
    assert (fake_bucket / "notes" / "todo.txt").read_text() == "keep me"


def test_load_pretrained_names_a_missing_url(fake_bucket):
    with pytest.raises(FileNotFoundError, match="gs://bucket/absent"):
        load_pretrained("gs://bucket/absent")
