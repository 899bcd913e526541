"""`squeezenet-export` refuses bad calibration folders and options in one line, for ONNX and LiteRT
alike, and leaves what the output path held untouched."""

import pytest

from tests.export_helpers import run_cli_error, write_images

FORMATS = ["onnx", "tflite"]


def needs_runtime(format):
    pytest.importorskip("onnxruntime" if format == "onnx" else "ai_edge_litert")


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize(
    ("make_folder", "message"),
    [
        (lambda folder: folder.mkdir(), "holds no images"),
        (lambda folder: None, "does not exist"),
        (lambda folder: write_images(folder, 3) / "002.png", "is not an image"),
    ],
)
def test_calibration_folder_errors_keep_the_existing_file(tmp_path, capsys, format, make_folder, message):
    needs_runtime(format)
    folder = tmp_path / "images"
    broken = make_folder(folder)
    if broken is not None:
        broken.write_bytes(b"not a png")
    output = tmp_path / f"served.{format}"
    output.write_bytes(b"the model in production")
    error = run_cli_error(capsys, "--int8", "--calibration", str(folder), "--output", str(output), format=format)
    assert message in error and str(folder) in error
    assert output.read_bytes() == b"the model in production"
    left = {p.name for p in tmp_path.iterdir()} - {"images"}
    assert left == {output.name}  # no temporary file left behind


@pytest.mark.parametrize(
    ("format", "args", "message", "status"),
    [
        *((format, ["--int8"], "--int8 needs --calibration IMAGES", 1) for format in FORMATS),
        ("onnx", ["--input-shape", "1x1x32x32"], "expected an input shape Nx3xHxW (NCHW", 2),
        ("tflite", ["--input-shape", "1x32x32x1"], "expected an input shape NxHxWx3 (NHWC", 2),
        ("onnx", ["--input-shape", "1x3x8x8"], "(NCHW, the onnx layout): height and width must be at least 17", 2),
        ("tflite", ["--input-shape", "1x8x8x3"], "(NHWC, the tflite layout): height and width must be at least 17", 2),
    ],
)
def test_option_errors_write_nothing(tmp_path, capsys, format, args, message, status):
    needs_runtime(format)
    output = tmp_path / f"m.{format}"
    assert message in run_cli_error(capsys, *args, "--output", str(output), format=format, status=status)
    assert not output.exists()
