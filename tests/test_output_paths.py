"""Writers refuse, before anything is written, an output that is one of their inputs, a file named for
another format, and an input too large to check in memory (issue #31): one line, status 2, every
file as it was."""

import os

import numpy as np
import pytest

from flax_squeezenet import create_model, save_onnx
from flax_squeezenet.cli import compress as compress_cli
from flax_squeezenet.cli import device_export
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.storage import files
from tests.export_helpers import write_images


def snapshot(folder):
    """Every file under `folder` with its bytes (symlinks as their target)."""
    return {p.relative_to(folder): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}  # fmt: skip


def refused(capsys, main, argv, prog, folder, message) -> None:
    """`main(argv)` exits 2 with one stderr line containing `message`, and `folder` is unchanged."""
    before = snapshot(folder)
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and message in lines[0], captured.err
    assert snapshot(folder) == before


@pytest.fixture
def weights(tmp_path):
    """A user's only copy of their weights, as bytes no writer produces (the checks come before reading)."""
    path = tmp_path / "mine.sqz"
    path.write_bytes(b"SQZ my only trained model")
    return path


def test_export_refuses_to_overwrite_its_weights(tmp_path, weights, capsys):
    os.link(weights, tmp_path / "hard.onnx")
    (tmp_path / "link.onnx").symlink_to(weights)
    for output in ("hard.onnx", "link.onnx"):
        refused(capsys, export_cli.main, ["--weights", str(weights), "--output", str(tmp_path / output)],
                "squeezenet-export", tmp_path, "would overwrite the input")  # fmt: skip


def test_export_refuses_an_output_inside_its_weights_directory(tmp_path, capsys):
    directory = tmp_path / "ckpt"  # a save_pretrained directory: the check comes before anything reads it
    directory.mkdir()
    (directory / "metadata.json").write_text("{}")
    refused(capsys, export_cli.main, ["--weights", str(directory), "--output", str(directory / "model.onnx")],
            "squeezenet-export", tmp_path, "would overwrite the input")  # fmt: skip


def test_compress_refuses_to_overwrite_its_weights(tmp_path, weights, capsys):
    os.link(weights, tmp_path / "hard.sqz")
    for output in (weights, tmp_path / "hard.sqz"):
        refused(capsys, compress_cli.main, [str(weights), "--output", str(output)], "squeezenet-compress", tmp_path,
                "would overwrite the input")  # fmt: skip


def test_int8_export_refuses_to_overwrite_a_calibration_image(tmp_path):
    folder = write_images(tmp_path / "images", 3)
    before = snapshot(tmp_path)
    with pytest.raises(files.OutputIsInputError, match="000.png"):  # refused before the weights are looked at
        save_onnx(create_model("squeezenet1_1", num_classes=4), {}, folder / "000.png", int8=True, calibration=folder)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("main", "prog", "argv", "message"),
    [
        (export_cli.main, "squeezenet-export", ["--random-init", "--output", "m.sqz"], "ending in .onnx"),
        (export_cli.main, "squeezenet-export", ["--random-init", "--format", "tflite", "--output", "m.onnx"],
         "ending in .tflite"),
        (compress_cli.main, "squeezenet-compress", ["squeezenet1_1", "--format", "net", "--output", "y.sqz"],
         "ending in .net"),
        (compress_cli.main, "squeezenet-compress", ["squeezenet1_1", "--output", "y.net"], "ending in .sqz"),
    ],
)  # fmt: skip
def test_an_output_named_for_another_format_is_refused(tmp_path, monkeypatch, capsys, main, prog, argv, message):
    monkeypatch.chdir(tmp_path)
    refused(capsys, main, argv, prog, tmp_path, message)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["--image-size", "300000"],
        ["--input-shape", "1x3x200000x200000"],
        ["--format", "tflite", "--input-shape", "1x200000x200000x3"],
    ],
)
def test_an_input_too_large_for_memory_is_refused(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.setattr(device_export, "physical_memory_bytes", lambda: 64 * 2**30)
    output = tmp_path / ("m.tflite" if "tflite" in argv else "m.onnx")
    refused(capsys, export_cli.main, ["--random-init", *argv, "--output", str(output)], "squeezenet-export",
            tmp_path, "more than this machine's 64 GiB of memory")  # fmt: skip
    assert not any(tmp_path.iterdir())


def test_tflite_input_shape_is_read_as_nhwc(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    output = tmp_path / "m.tflite"
    argv = ["--random-init", "--num-classes", "4", "--format", "tflite", "--input-shape", "1x32x24x3"]
    assert export_cli.main([*argv, "--output", str(output)]) == 0, capsys.readouterr().err
    (source,) = Interpreter(model_path=str(output)).get_input_details()
    assert list(source["shape"]) == [1, 32, 24, 3]
    refused(capsys, export_cli.main, [*argv[:-1], "1x3x32x32", "--output", str(tmp_path / "n.tflite")],
            "squeezenet-export", tmp_path, "expected an input shape NxHxWx3 (NHWC")  # fmt: skip
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), ["m.tflite"])
