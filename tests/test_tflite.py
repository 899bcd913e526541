"""LiteRT export, run in the ai_edge_litert interpreter: float32 and int8 against the Flax model."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_squeezenet as fsq
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.deploy import onnx_int8, tflite
from flax_squeezenet.weights import conventions, pretrained
from tests.conftest import require_shared
from tests.export_helpers import run_cli_error, write_images

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

PHOTOS = "data/imagenet-photos"
WEIGHTS = "pretrained/torchvision_squeezenet1_1.ncnn.param"
PAPER_WEIGHTS = "pretrained/deepcompression_squeezenet1_0.net"
CALIBRATION_PHOTOS = 64
CHECKED_PHOTOS = 100
# Issue #13's target is 98%; not reached (BENCHMARKS.md, "LiteRT"). On these 100 photos: 94%, and
# 92% without the bias correction and with min-max instead of 99.99th-percentile ranges.
MIN_AGREEMENT = 0.94


def float_tolerance(reference):
    """1e-4 of the largest logit (at least 1e-4): float32 kernels sum in another order than XLA's."""
    return 1e-4 * max(1.0, float(np.abs(reference).max()))


def photos(start, count):
    files = onnx_int8.image_files(require_shared(PHOTOS))
    order = np.random.default_rng(0).permutation(len(files))
    return fsq.preprocess([files[i] for i in order[start : start + count]])


def operators(path):
    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    subgraph = model.subgraphs[0]
    return [names[model.operatorCodes[op.opcodeIndex].builtinCode] for op in subgraph.operators]


def io_details(path):
    interpreter = Interpreter(model_path=str(path))
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


@pytest.mark.parametrize("weights", [WEIGHTS, PAPER_WEIGHTS])
def test_float32_matches_flax_on_photos(tmp_path, weights):
    model, variables = fsq.load_pretrained(require_shared(weights))
    convention = pretrained.input_convention(require_shared(weights))
    images = photos(0, 6)
    path = fsq.save_tflite(model, variables, tmp_path / "model.tflite", preprocessing=convention)
    assert tflite.read_preprocessing(path) == convention  # the paper's file: Caffe's BGR 0-255 minus mean
    expected = onnx_int8.flax_logits(model, variables, images)
    got = tflite.run_tflite(path, images)  # the batch of 1 resized to 6
    assert got.shape == expected.shape == (6, 1000)
    assert np.abs(got - expected).max() <= float_tolerance(expected)
    assert {"CONV_2D", "MAX_POOL_2D", "CONCATENATION", "MEAN"} <= set(operators(path))
    assert ("PAD" in operators(path)) == (model.classifier_padding == 1)
    source, target = io_details(path)
    assert source["dtype"] == target["dtype"] == np.float32
    assert list(source["shape_signature"]) == [-1, 224, 224, 3]


def random_model(name="squeezenet1_1", size=32, **options):
    model = fsq.create_model(name, **options)
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, model.in_channels)))
    params = dict(variables["params"])
    params["classifier"] = {**params["classifier"], "kernel": params["classifier"]["kernel"] * 300.0}
    return model, {"params": params}


@pytest.mark.parametrize(
    ("name", "options", "image_size"),
    [
        ("squeezenet1_1", dict(num_classes=10, in_channels=1), 28 + 4),
        ("squeezenet1_0", dict(num_classes=7, bypass="complex", classifier_padding=1), 33),
        ("squeezenet1_1", dict(num_classes=5, bypass="simple"), (36, 39)),  # pools of mixed parity: PADV2
    ],
)
def test_float32_variants_match_flax(tmp_path, name, options, image_size):
    model, variables = random_model(name, **options)
    height, width = tflite.input_size(image_size)
    images = np.random.default_rng(0).standard_normal((3, height, width, model.in_channels)).astype(np.float32)
    path = fsq.save_tflite(model, variables, tmp_path / "model.tflite", image_size=image_size, batch=3)
    expected = np.asarray(model.apply(variables, images))
    assert np.abs(expected).max() > 1.0
    np.testing.assert_array_equal(tflite.reference_logits(model, variables, images).argmax(1), expected.argmax(1))
    got = tflite.run_tflite(path, images)
    assert got.shape == (3, model.num_classes)
    assert np.abs(got - expected).max() <= float_tolerance(expected)
    source, _ = io_details(path)
    assert list(source["shape_signature"]) == [3, height, width, model.in_channels]
    assert tflite.read_preprocessing(path) is None


@pytest.mark.parametrize(
    ("options", "convention"),
    [
        (dict(num_classes=4), conventions.InputConvention(mean=(0.2, 0.5, 0.7), std=(0.3, 0.2, 0.1), resize_size=32,
                                                          crop_size=32, channel_order="BGR")),
        (dict(num_classes=4, in_channels=1), conventions.InputConvention(mean=(0.3,), std=(0.35,), resize_size=32,
                                                                         crop_size=32, channel_order="L")),
    ],
)
def test_file_with_a_convention_takes_pixels_and_normalizes_them_itself(tmp_path, options, convention):
    model, variables = random_model(**options)
    pixels = np.random.default_rng(0).random((3, 32, 32, model.in_channels)).astype(np.float32)  # RGB or L in [0, 1]
    order = slice(None, None, -1) if convention.channel_order == "BGR" else slice(None)
    normalized = (pixels[..., order] - np.asarray(convention.mean)) / np.asarray(convention.std)
    path = fsq.save_tflite(model, variables, tmp_path / "m.tflite", image_size=32, preprocessing=convention)
    expected = np.asarray(model.apply(variables, normalized.astype(np.float32)))
    interpreter = Interpreter(model_path=str(path))
    interpreter.resize_tensor_input(0, [3, 32, 32, model.in_channels])
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.abs(got - expected).max() <= float_tolerance(expected)
    np.testing.assert_allclose(tflite.run_tflite(path, normalized), got, rtol=1e-5, atol=1e-5)


def test_int8_agrees_with_float_on_held_back_photos(tmp_path):
    model, variables = fsq.load_pretrained(require_shared(WEIGHTS))
    calibration, checked = photos(0, CALIBRATION_PHOTOS), photos(CALIBRATION_PHOTOS, CHECKED_PHOTOS)
    path = fsq.save_tflite(model, variables, tmp_path / "int8.tflite", int8=True, calibration=calibration, batch=1)
    result = onnx_int8.agreement(onnx_int8.flax_logits(model, variables, checked), tflite.run_tflite(path, checked))
    assert result.top1_agreement >= MIN_AGREEMENT, result
    source, target = io_details(path)
    assert source["dtype"] == target["dtype"] == np.uint8  # what MediaPipe accepts
    assert list(source["shape_signature"]) == [1, 224, 224, 3]
    assert {"CONV_2D", "MAX_POOL_2D", "CONCATENATION"} <= set(operators(path))
    assert path.stat().st_size < 1.5e6



def test_one_channel_int8_has_uint8_input_and_output(tmp_path):
    model, variables = random_model(num_classes=10, in_channels=1)
    files = onnx_int8.image_files(write_images(tmp_path / "images", 12, mode="L"))
    images = onnx_int8.preprocess_for_model(files, channels=1, image_size=32, mean=(0.3,), std=(0.35,))
    path = fsq.save_tflite(model, variables, tmp_path / "m.tflite", int8=True, calibration=images, image_size=32)
    source, target = io_details(path)
    assert source["dtype"] == target["dtype"] == np.uint8  # what MediaPipe accepts
    assert list(target["shape"]) == [1, 10]
    expected = onnx_int8.flax_logits(model, variables, images)
    got = tflite.run_tflite(path, images)
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_cli_float32_fixed_shape(tmp_path, capsys):
    output = tmp_path / "out" / "m.tflite"
    argv = ["--random-init", "--num-classes", "4", "--format", "tflite", "--input-shape", "2x40x48x3"]
    assert export_cli.main([*argv, "--output", str(output)]) == 0, capsys.readouterr().err
    assert "(float32, input 2x40x48x3 NHWC); LiteRT vs Flax: max |difference|" in capsys.readouterr().out
    source, target = io_details(output)
    assert list(source["shape_signature"]) == [2, 40, 48, 3] and list(target["shape"]) == [2, 4]
    assert [p.name for p in output.parent.iterdir()] == ["m.tflite"]


def test_cli_int8_reports_held_back_agreement(tmp_path, capsys):
    folder = write_images(tmp_path / "images", 8)
    output = tmp_path / "m.tflite"
    argv = ["--random-init", "--num-classes", "4", "--format", "tflite", "--int8", "--calibration", str(folder),
            "--weight-rounding", "nearest"]  # AdaRound (the default) fits for minutes on 2 cores: bench/photos.py
    assert export_cli.main([*argv, "--image-size", "32", "--output", str(output)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "on 2 held-back images: top-1 agreement" in out and "no verdict" in out
    source, target = io_details(output)
    assert source["dtype"] == target["dtype"] == np.uint8  # what MediaPipe accepts
    assert tflite.read_preprocessing(output) == conventions.InputConvention(resize_size=32, crop_size=32)
    assert list(source["shape_signature"]) == [-1, 32, 32, 3]


def test_read_preprocessing_refuses_other_files(tmp_path):
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x08\x07" + bytes(64))
    with pytest.raises(ValueError, match="model.onnx is not a TFLite flatbuffer"):
        tflite.read_preprocessing(other)




def test_missing_litert_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    output = tmp_path / "m.tflite"
    error = run_cli_error(capsys, "--output", str(output), format="tflite")
    assert "install with pip install -e '.[litert]'" in error
    assert not output.exists()
    with pytest.raises(ImportError, match=r"pip install -e '\.\[litert\]'"):
        fsq.save_tflite(*random_model(), tmp_path / "api.tflite", image_size=32)



def test_import_needs_no_litert_tensorflow_or_torch():
    code = "import sys, flax_squeezenet; print(sorted({'ai_edge_litert', 'tensorflow', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
