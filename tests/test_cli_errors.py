"""`squeezenet-predict` and `squeezenet-export` on a user's mistakes: one line on stderr, nothing half-written,
bounded memory (issue #10, items 2, 4 and 7)."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from flax_squeezenet import create_model, save_pretrained
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.cli import predict as predict_cli
from flax_squeezenet.weights.conventions import InputConvention

NCNN = "pretrained/torchvision_squeezenet1_1.ncnn.param"


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_SQUEEZENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLAX_SQUEEZENET_CLASS_NAMES", raising=False)


@pytest.fixture
def images(tmp_path):
    paths = []
    for seed in range(5):
        path = tmp_path / f"image{seed}.png"
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def checkpoint(tmp_path):
    model = create_model("squeezenet1_1", num_classes=4)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 17, 17, 3)))
    return str(save_pretrained(tmp_path / "ckpt", variables, model="squeezenet1_1", num_classes=4))


def one_error_line(captured, prog) -> str:
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]


@pytest.fixture
def evil_pth(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(RunsCode(marker)))
    return str(tmp_path / "evil.pth"), marker


def test_unsafe_pickle_through_either_command(evil_pth, images, tmp_path, capsys):
    path, marker = evil_pth
    assert predict_cli.main([images[0], "--weights", path]) == 1
    assert "refusing to unpickle global" in one_error_line(capsys.readouterr(), "squeezenet-predict")
    assert export_cli.main(["--weights", path, "--output", str(tmp_path / "m.onnx")]) == 1
    line = one_error_line(capsys.readouterr(), "squeezenet-export")
    assert path in line and "refusing to unpickle global" in line
    assert not marker.exists() and not (tmp_path / "m.onnx").exists()


def test_unsafe_pickle_prints_no_traceback_from_the_installed_command(evil_pth, images):
    path, marker = evil_pth
    done = subprocess.run([sys.executable, "-m", "flax_squeezenet.cli.predict", images[0], "--weights", path],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert "Traceback" not in done.stderr and "refusing to unpickle" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_export_refuses_a_bad_class_count_before_writing(value, tmp_path, capsys):
    output = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as exit_:
        export_cli.main(["--random-init", "--num-classes", value, "--output", str(output)])
    assert exit_.value.code == 2
    line = one_error_line(capsys.readouterr(), "squeezenet-export")
    assert "--num-classes" in line and "expected a positive integer" in line and repr(value) in line
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_keeps_the_existing_file(checkpoint, tmp_path, monkeypatch, capsys):
    output = tmp_path / "served.onnx"
    output.write_bytes(b"the model in production")

    def disagrees(*args):
        raise ValueError("onnxruntime disagrees")

    monkeypatch.setattr(export_cli, "check_export", disagrees)
    assert export_cli.main(["--weights", checkpoint, "--image-size", "17", "--output", str(output)]) == 1
    assert "onnxruntime disagrees" in one_error_line(capsys.readouterr(), "squeezenet-export")
    assert output.read_bytes() == b"the model in production"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "served.onnx"]  # no temporary left


def test_export_output_that_is_a_directory(checkpoint, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert export_cli.main(["--weights", checkpoint, "--output", str(tmp_path / "out")]) == 1
    assert "is a directory: expected a file path" in one_error_line(capsys.readouterr(), "squeezenet-export")
    assert list((tmp_path / "out").iterdir()) == []


def test_damaged_checkpoint_is_one_line(checkpoint, images, capsys):
    os.remove(os.path.join(checkpoint, "variables", "manifest.ocdbt"))
    assert predict_cli.main([images[0], "--weights", checkpoint]) == 1
    assert "is not a readable Orbax checkpoint" in one_error_line(capsys.readouterr(), "squeezenet-predict")


def test_binary_param_through_predict_names_the_file(images, tmp_path, capsys):
    (tmp_path / "m.param").write_bytes(bytes(range(256)))
    shutil.copyfile(require_shared(NCNN).with_suffix(".bin"), tmp_path / "m.bin")
    assert predict_cli.main([images[0], "--weights", str(tmp_path / "m.param")]) == 1
    line = one_error_line(capsys.readouterr(), "squeezenet-predict")
    assert str(tmp_path / "m.param") in line and "expected text" in line


def test_predict_reads_images_in_batches_of_the_given_size(images, checkpoint, monkeypatch, capsys):
    assert predict_cli.main([*images, "--weights", checkpoint, "--json", "--top", "4"]) == 0
    all_at_once = json.loads(capsys.readouterr().out)
    seen = []
    original = InputConvention.preprocess
    monkeypatch.setattr(InputConvention, "preprocess", lambda self, paths: seen.append(len(paths)) or original(self, paths))
    assert predict_cli.main([*images, "--weights", checkpoint, "--json", "--top", "4", "--batch-size", "2"]) == 0
    assert seen == [2, 2, 1]
    batched = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in batched] == images
    for one, other in zip(all_at_once, batched):
        assert [p["class"] for p in one["predictions"]] == [p["class"] for p in other["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in one["predictions"]],
                                   [p["probability"] for p in other["predictions"]], rtol=1e-5)  # fmt: skip


def test_predict_checks_every_image_before_loading_weights(images, tmp_path, capsys):
    (tmp_path / "notes.jpg").write_text("shopping list")
    assert predict_cli.main([*images, str(tmp_path / "notes.jpg"), "--weights", str(tmp_path / "absent")]) == 1
    assert "notes.jpg is not an image" in one_error_line(capsys.readouterr(), "squeezenet-predict")
