"""The `squeezenet-predict` command: output formats and one-line errors."""

import json
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared

from flax_squeezenet import create_model, save_pretrained
from flax_squeezenet.cli.predict import main
from flax_squeezenet.weights import imagenet

NCNN = "pretrained/torchvision_squeezenet1_1.ncnn.param"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAX_SQUEEZENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLAX_SQUEEZENET_CLASS_NAMES", raising=False)


@pytest.fixture
def class_names(monkeypatch):
    monkeypatch.setenv("FLAX_SQUEEZENET_CLASS_NAMES", str(require_shared("data/imagenet_classes.txt")))


@pytest.fixture
def cats():
    return [str(require_shared("images/cat.jpg")), str(require_shared("images/cat2.jpeg"))]


def assert_one_line_error(captured, *fragments):
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("squeezenet-predict: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_text_output_lists_the_top_k(capsys, class_names, cats):
    assert main([*cats, "--weights", str(require_shared(NCNN)), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * (1 + 3)
    assert lines[0] == cats[0] and lines[4] == cats[1]
    assert "Egyptian cat" in lines[5]  # cat2.jpeg's top class
    percentages = [float(line.split("%")[0]) for line in lines[5:8]]
    assert percentages == sorted(percentages, reverse=True)


def test_json_output(capsys, class_names, cats):
    assert main([cats[1], "--weights", str(require_shared(NCNN)), "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["image"] == cats[1]
    predictions = result["predictions"]
    assert len(predictions) == 5
    assert 281 <= predictions[0]["class"] <= 285
    assert predictions[0]["name"] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"][predictions[0]["class"] - 281]
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6


def test_without_class_names_prints_numbers_and_one_warning(capsys, monkeypatch, cats):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/imagenet_classes.txt"
    monkeypatch.setattr(imagenet, "CLASS_NAMES_URL", closed)
    assert main([cats[1], "--weights", str(require_shared(NCNN)), "--top", "1"]) == 0
    captured = capsys.readouterr()
    _, number, *label = captured.out.strip().splitlines()[1].split()
    assert label == ["class", number]
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("squeezenet-predict: warning:") and closed in warnings[0]


def test_missing_file(capsys, tmp_path):
    assert main([str(tmp_path / "missing.jpg")]) == 1
    assert_one_line_error(capsys.readouterr(), "missing.jpg", "no such file")


def test_not_an_image(capsys, tmp_path):
    (tmp_path / "notes.jpg").write_text("shopping list")
    assert main([str(tmp_path / "notes.jpg")]) == 1
    assert_one_line_error(capsys.readouterr(), "notes.jpg", "not an image")


def test_weights_that_do_not_fit(capsys, tmp_path):
    model = create_model("squeezenet1_0")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 21, 21, 3)))
    variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    save_pretrained(tmp_path / "v1_0", variables, model="squeezenet1_0")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert main([str(image), "--weights", str(tmp_path / "v1_0"), "--model", "squeezenet1_1"]) == 1
    assert_one_line_error(capsys.readouterr(), "params/conv1/kernel", "squeezenet1_1")
    assert main([str(image), "--weights", str(tmp_path / "nothing.pth")]) == 1
    assert_one_line_error(capsys.readouterr(), "nothing.pth")
    assert main([str(image), "--weights", str(tmp_path / "v1_0"), "--top", "1001"]) == 1
    assert_one_line_error(capsys.readouterr(), "--top must be between 1 and 1000")


def test_unknown_pretrained_name(capsys):
    assert main(["x.jpg", "--model", "squeezenet9"]) == 1
    assert_one_line_error(capsys.readouterr(), "squeezenet9", "squeezenet1_1")


@pytest.mark.slow
def test_installed_entry_point(class_names, cats):
    program = pathlib.Path(sys.executable).parent / "squeezenet-predict"
    if not program.exists():
        pytest.skip(f"{program} is not installed (pip install -e .)")
    done = subprocess.run(
        [str(program), cats[1], "--weights", str(require_shared(NCNN)), "--json", "--top", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert [p["name"] for p in result["predictions"]] == ["Egyptian cat", "tabby"]
    failed = subprocess.run([str(program), "/nonexistent/cat.jpg"], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("squeezenet-predict: error:")
