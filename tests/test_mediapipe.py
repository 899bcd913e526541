"""The exported files load as they are in MediaPipe's `ImageClassifier` (no option) and name the classes;
the ONNX file carries the same names and normalization in its metadata_props."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_squeezenet as fsq
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.deploy import onnx_int8, tflite
from flax_squeezenet.weights import conventions, imagenet, pretrained
from tests.conftest import require_shared
from tests.export_helpers import write_images

mp = pytest.importorskip("mediapipe")
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions

onnx = pytest.importorskip("onnx")

WEIGHTS = "pretrained/torchvision_squeezenet1_1.ncnn.param"
NAMES = "data/imagenet_classes.txt"
PHOTOS = 5  # of ../shared/data/imagenet-photos, besides the cat
CALIBRATION = 16


def classify(path, images):
    """MediaPipe's top category (index, name, score) for each uint8 RGB image, the classifier made from
    the file alone."""
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)))
    with vision.ImageClassifier.create_from_options(options) as classifier:
        tops = [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
                .classifications[0].categories[0] for image in images]  # fmt: skip
    return [(top.index, top.category_name, top.score) for top in tops]


def crops(convention, files):
    """The convention's resized, center-cropped pixels of `files` as uint8, which MediaPipe's resize
    leaves as they are (it stretches the whole image to the input size, without a crop)."""
    plain = dataclasses.replace(convention, mean=(0.0,) * 3, std=(1.0,) * 3, channel_order="RGB")
    return np.round(plain.preprocess(files) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def torchvision_files(tmp_path_factory):
    """squeezenet1_1's float32 .tflite (written by the CLI, ImageNet names from ../shared), int8 .tflite
    and ONNX file, with the model, its convention and the photos."""
    weights, names = require_shared(WEIGHTS), require_shared(NAMES)
    folder = tmp_path_factory.mktemp("mediapipe")
    files = [require_shared("images/cat.jpg"), *onnx_int8.image_files(require_shared("data/imagenet-photos"))[:PHOTOS]]
    model, variables = fsq.load_pretrained(weights)
    convention = pretrained.input_convention(weights)
    calibration = onnx_int8.image_files(require_shared("data/imagenet-photos"))[-CALIBRATION:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(imagenet.CLASS_NAMES_ENV, str(names))
        for output, format in (("float32.tflite", "tflite"), ("model.onnx", "onnx")):
            argv = ["--weights", str(weights), "--format", format, "--output", str(folder / output)]
            assert export_cli.main(argv) == 0
    int8 = fsq.save_tflite(model, variables, folder / "int8.tflite", int8=True,
                           calibration=convention.preprocess(calibration), preprocessing=convention,
                           class_names=imagenet.read_class_names(names))  # fmt: skip
    return {"model": model, "variables": variables, "convention": convention, "files": files, "int8": int8,
            "float32": folder / "float32.tflite", "onnx": folder / "model.onnx",
            "names": imagenet.read_class_names(names)}  # fmt: skip


def test_float32_file_names_the_flax_models_class_on_every_photo(torchvision_files):
    t = torchvision_files
    pixels = crops(t["convention"], t["files"])
    logits = onnx_int8.flax_logits(t["model"], t["variables"], t["convention"].preprocess(t["files"]))
    got = classify(t["float32"], pixels)
    assert [name for _, name, _ in got] == [t["names"][i] for i in logits.argmax(1)]
    np.testing.assert_allclose([score for *_, score in got], logits.max(1), rtol=1e-4)  # the scores are logits
    whole = vision.ImageClassifier.create_from_model_path(str(t["float32"]))
    with whole:  # a whole photo, stretched by MediaPipe to 224x224, runs as well
        top = whole.classify(mp.Image.create_from_file(str(t["files"][0]))).classifications[0].categories[0]
    assert top.category_name == t["names"][top.index]


def test_int8_file_runs_in_mediapipe_as_in_litert(torchvision_files):
    t = torchvision_files
    pixels = crops(t["convention"], t["files"])
    litert = tflite.run_tflite(t["int8"], t["convention"].preprocess(t["files"]))
    got = classify(t["int8"], pixels)
    assert [index for index, *_ in got] == list(litert.argmax(1))
    assert [name for _, name, _ in got] == [t["names"][i] for i in litert.argmax(1)]


def test_onnx_file_carries_class_names_and_normalization(torchvision_files):
    t = torchvision_files
    properties = {p.key: p.value for p in onnx.load(t["onnx"]).metadata_props}
    assert json.loads(properties["class_names"]) == t["names"]
    assert conventions.InputConvention.from_dict(json.loads(properties["preprocessing"])) == t["convention"]


def test_fine_tuned_model_comes_out_of_mediapipe_with_its_class_names(tmp_path):
    model = fsq.create_model("squeezenet1_1", num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    convention = conventions.InputConvention(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), resize_size=36, crop_size=32)
    fsq.save_pretrained(tmp_path / "mine", variables, model="squeezenet1_1", num_classes=3,
                        preprocessing=convention, class_names=["a", "b", "c"])  # fmt: skip
    images = write_images(tmp_path / "photos", 8)
    pixels = crops(convention, onnx_int8.image_files(images))
    base = ["--weights", str(tmp_path / "mine"), "--format", "tflite"]
    int8 = ["--int8", "--calibration", str(images), "--weight-rounding", "nearest"]  # AdaRound's fit: minutes of CI
    for name, extra in (("f32.tflite", []), ("int8.tflite", int8)):
        assert export_cli.main([*base, *extra, "--output", str(tmp_path / name)]) == 0
        got = classify(tmp_path / name, pixels)
        assert {name for _, name, _ in got} <= {"a", "b", "c"}
        assert all(name == "abc"[index] for index, name, _ in got)
    assert export_cli.main([*base[:2], "--output", str(tmp_path / "m.onnx")]) == 0
    properties = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(properties["class_names"]) == ["a", "b", "c"]


@pytest.mark.parametrize("names", [["a", "b"], ["a", "", "c"], ["a", "b\nc", "d"]])
def test_bad_class_names_are_refused(tmp_path, names):
    model = fsq.create_model("squeezenet1_1", num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="class names"):
        fsq.save_tflite(model, variables, tmp_path / "m.tflite", image_size=32, class_names=names)
    assert not (tmp_path / "m.tflite").exists()
