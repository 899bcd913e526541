"""Preprocessing matches torchvision's ImageNet evaluation transform."""

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from flax_squeezenet import IMAGENET_MEAN, IMAGENET_STD, load_image
from flax_squeezenet.weights import preprocess
from flax_squeezenet.weights.preprocess import center_crop_box, resized_size

MEAN = np.array(IMAGENET_MEAN, np.float32)
STD = np.array(IMAGENET_STD, np.float32)


def torchvision_eval_transform(image: Image.Image) -> np.ndarray:
    """Resize(256) + CenterCrop(224) + ToTensor() + Normalize(), spelled out from torchvision's source."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = 256, int(256 * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize(size, Image.BILINEAR)
    top = int(round((size[1] - 224) / 2.0))
    left = int(round((size[0] - 224) / 2.0))
    pixels = np.asarray(image, np.float32)[top : top + 224, left : left + 224] / 255.0
    return (pixels - MEAN) / STD


def noise_image(width, height, seed=0, channels=3):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("width,height", [(300, 250), (250, 333), (224, 224), (640, 257)])
def test_matches_the_torchvision_transform(width, height):
    array = noise_image(width, height)
    expected = torchvision_eval_transform(Image.fromarray(array))
    batch = preprocess(array)
    assert batch.shape == (1, 224, 224, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], expected, atol=1e-6)


def test_matches_the_torchvision_transform_on_a_photo():
    path = require_shared("images/cat.jpg")
    expected = torchvision_eval_transform(Image.open(path).convert("RGB"))
    np.testing.assert_allclose(preprocess(path)[0], expected, atol=1e-6)
    np.testing.assert_array_equal(preprocess(str(path)), preprocess(Image.open(path)))


def test_constant_image_normalises_to_the_expected_value():
    batch = preprocess(np.full((300, 400, 3), 128, np.uint8))
    np.testing.assert_allclose(batch, np.broadcast_to((128 / 255 - MEAN) / STD, batch.shape), atol=1e-6)


def test_torchvision_size_and_offset_rounding():
    assert resized_size(333, 250, 256) == (340, 256)  # 256 * 333 / 250 = 340.99, truncated
    assert resized_size(250, 333, 256) == (256, 340)
    assert center_crop_box(257, 259, 224) == (16, 18, 240, 242)  # 16.5 -> 16, 17.5 -> 18 (half to even)
    with pytest.raises(ValueError, match="center-crop"):
        center_crop_box(200, 300, 224)


@pytest.mark.parametrize("width,height,left,top", [(40, 45, 16, 19), (42, 47, 18, 20)])
def test_crop_takes_the_rounded_center(width, height, left, top):
    ys, xs = np.mgrid[0:height, 0:width]
    coordinates = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    crop = preprocess(coordinates, resize_size=min(width, height), crop_size=7)[0]
    pixels = np.rint((crop * STD + MEAN) * 255)
    assert (pixels[0, 0, 0], pixels[0, 0, 1]) == (left, top)
    assert (pixels[6, 6, 0], pixels[6, 6, 1]) == (left + 6, top + 6)


def test_grayscale_and_rgba_become_rgb():
    gray = noise_image(260, 240, channels=1)
    expected = preprocess(np.repeat(gray[..., None], 3, axis=-1))
    np.testing.assert_array_equal(preprocess(gray), expected)
    np.testing.assert_array_equal(preprocess(gray[..., None]), expected)
    np.testing.assert_array_equal(preprocess(Image.fromarray(gray)), expected)
    rgba = noise_image(260, 240, channels=4)
    np.testing.assert_array_equal(preprocess(rgba), preprocess(rgba[..., :3].copy()))


def test_batches_and_lists():
    images = np.stack([noise_image(230, 230, seed=s) for s in range(3)])
    batch = preprocess(images)
    assert batch.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(batch, preprocess(list(images)))
    np.testing.assert_array_equal(batch[1:2], preprocess(images[1]))


def test_bad_input_says_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((240, 240, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 1\|3\|4\)"):
        preprocess(np.zeros((240, 240, 2), np.uint8))
    with pytest.raises(ValueError, match="at least one image"):
        preprocess([])
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match="no such file"):
        preprocess(tmp_path / "missing.jpg")
