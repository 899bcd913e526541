"""Input conventions travel with the weights: each source gets its own preprocessing."""

import json

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image
from test_pretrained import NCNN, isolated_cache, random_variables  # noqa: F401

import flax_squeezenet as fsq
from flax_squeezenet.cli import predict
from flax_squeezenet.weights.conventions import DEEP_COMPRESSION, IMAGENET, InputConvention
from flax_squeezenet.weights.pretrained import input_convention

FASHION = InputConvention(mean=(0.286,), std=(0.353,), resize_size=64, crop_size=64, channel_order="L")


def test_each_source_has_its_convention(tmp_path):
    assert input_convention(require_shared(NCNN)) == IMAGENET
    assert input_convention(require_shared("pretrained/deepcompression_squeezenet1_0.net")) == DEEP_COMPRESSION
    assert DEEP_COMPRESSION.crop_size == 227
    module = fsq.squeezenet1_1(num_classes=10, in_channels=1)
    fsq.save_pretrained(tmp_path / "fashion", random_variables(module), model="squeezenet1_1",
                        num_classes=10, in_channels=1, preprocessing=FASHION)  # fmt: skip
    assert input_convention(tmp_path / "fashion") == FASHION
    metadata = json.loads((tmp_path / "fashion" / "metadata.json").read_text())
    del metadata["preprocessing"]
    (tmp_path / "fashion" / "metadata.json").write_text(json.dumps(metadata))
    assert input_convention(tmp_path / "fashion") == IMAGENET, "saves from before conventions"


def test_rgb_bgr_and_grayscale_preprocessing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    rgb = IMAGENET.preprocess(image)
    np.testing.assert_array_equal(rgb, fsq.preprocess(image))
    bgr = InputConvention(mean=IMAGENET.mean[::-1], std=IMAGENET.std[::-1], channel_order="BGR").preprocess(image)
    np.testing.assert_allclose(bgr, rgb[..., ::-1], atol=1e-6)
    assert DEEP_COMPRESSION.preprocess([image, image]).shape == (2, 227, 227, 3)
    gray = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    batch = FASHION.preprocess(gray)
    assert batch.shape == (1, 64, 64, 1)
    upsampled = np.asarray(Image.fromarray(gray).resize((64, 64), Image.BILINEAR), np.float32) / 255.0
    np.testing.assert_allclose(batch[0, ..., 0], (upsampled - 0.286) / 0.353, atol=1e-6)


def test_invalid_conventions_say_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="expected 1 mean and std values for L"):
        InputConvention(channel_order="L")
    with pytest.raises(ValueError, match="crop_size <= resize_size"):
        InputConvention(resize_size=200)
    with pytest.raises(ValueError, match=r"metadata.json: invalid \"preprocessing\""):
        InputConvention.from_dict({"mean": [0.5], "std": [0.5], "channel_order": "RGB"}, "metadata.json")


def test_predict_uses_the_saved_convention_of_a_grayscale_model(tmp_path, capsys):
    module = fsq.squeezenet1_1(num_classes=10, in_channels=1)
    fsq.save_pretrained(tmp_path / "fashion", random_variables(module), model="squeezenet1_1",
                        num_classes=10, in_channels=1, preprocessing=FASHION)  # fmt: skip
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "shirt.png")
    assert predict.main([str(tmp_path / "shirt.png"), "--weights", str(tmp_path / "fashion"), "--json", "--top", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results[0]["predictions"]) == 3


def test_onnx_export_carries_the_convention(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from flax_squeezenet.cli import export

    module = fsq.squeezenet1_1(num_classes=10, in_channels=1)
    fsq.save_pretrained(tmp_path / "fashion", random_variables(module), model="squeezenet1_1",
                        num_classes=10, in_channels=1, preprocessing=FASHION)  # fmt: skip
    output = tmp_path / "fashion.onnx"
    assert export.main(["--weights", str(tmp_path / "fashion"), "--output", str(output), "--image-size", "64"]) == 0
    properties = {prop.key: prop.value for prop in onnx.load(str(output)).metadata_props}
    assert InputConvention.from_dict(json.loads(properties["preprocessing"])) == FASHION


def test_a_pretrained_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    module = fsq.squeezenet1_1(num_classes=10, in_channels=1)
    fsq.save_pretrained(tmp_path / "squeezenet1_1", random_variables(module), model="squeezenet1_1",
                        num_classes=10, in_channels=1, preprocessing=FASHION)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert input_convention("squeezenet1_1") == IMAGENET, "load_pretrained reads the published weights"
    assert input_convention("./squeezenet1_1") == FASHION
