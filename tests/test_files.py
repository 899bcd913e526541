"""Everything written keeps the user's umask, and a failed write leaves what was there (issue #10, items 2 and 8)."""

import os
import stat

import jax
import jax.numpy as jnp
import pytest
from test_pretrained import torchvision_pth

from flax_squeezenet import create_model, load_pretrained, save_onnx, save_pretrained
from flax_squeezenet.weights import pretrained


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def small_variables():
    model = create_model("squeezenet1_1", num_classes=3)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 17, 17, 3)))


def test_current_umask_reads_without_changing_it(umask_022):
    from flax_squeezenet.storage import files

    assert files.current_umask() == 0o022
    assert files.current_umask() == 0o022


def test_atomic_file_respects_the_umask(tmp_path, umask_022):
    from flax_squeezenet.storage import files

    with files.atomic_file(tmp_path / "out.bin") as temporary:
        temporary.write_bytes(b"data")
    assert mode(tmp_path / "out.bin") == 0o644
    os.umask(0o077)
    with files.atomic_file(tmp_path / "private.bin") as temporary:
        temporary.write_bytes(b"data")
    assert mode(tmp_path / "private.bin") == 0o600


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    from flax_squeezenet.storage import files

    target = tmp_path / "model.onnx"
    target.write_bytes(b"week of training")
    with pytest.raises(RuntimeError, match="disk full"):
        with files.atomic_file(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"week of training"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_save_pretrained_directories_and_files_respect_the_umask(tmp_path, umask_022):
    _, variables = small_variables()
    directory = save_pretrained(tmp_path / "export", variables, model="squeezenet1_1", num_classes=3)
    for path in [directory, *directory.rglob("*")]:
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path
    save_pretrained(tmp_path / "export", variables, model="squeezenet1_1", num_classes=3)  # replacing
    assert mode(directory) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_save_onnx_respects_the_umask(tmp_path, umask_022):
    pytest.importorskip("onnx")
    model, variables = small_variables()
    path = save_onnx(model, variables, tmp_path / "model.onnx")
    assert mode(path) == 0o644


def test_the_weights_cache_respects_the_umask(tmp_path, umask_022, monkeypatch):
    source = torchvision_pth(tmp_path / "weights.pth", "1_1")
    weights = pretrained.PretrainedWeights("squeezenet1_1", source.as_uri(), "", 0.0, 0.0)
    monkeypatch.setitem(pretrained.PRETRAINED, "squeezenet1_1", weights)
    load_pretrained("squeezenet1_1", cache_dir=tmp_path / "cache")
    cached = list((tmp_path / "cache").rglob("*"))
    assert any(path.suffix == ".pth" for path in cached) and any(path.is_dir() for path in cached)
    for path in [tmp_path / "cache", *cached]:
        assert mode(path) == (0o755 if path.is_dir() else 0o644), path
