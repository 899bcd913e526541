"""Every image mode PIL opens is read as torchvision's loader reads it, or better where that is wrong,
or refused with a clear error (issue #10, items 4, 5 and 9)."""

import numpy as np
import pytest
from PIL import Image
from test_preprocess import torchvision_eval_transform

from flax_squeezenet import load_image
from flax_squeezenet.cli import predict as predict_cli
from flax_squeezenet.weights import preprocess

WIDTH, HEIGHT = 300, 260
EXIF_ORIENTATION = 0x0112


def rgb_noise(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8))


def torchvision_reads(path) -> np.ndarray:
    """What torchvision's ImageFolder loader (`Image.open(f).convert("RGB")`) plus its eval transform give."""
    with Image.open(path) as image:
        return torchvision_eval_transform(image.convert("RGB"))


def palette_with_transparency():
    image = rgb_noise().quantize(64)
    image.info["transparency"] = bytes([0] * 8 + [255] * 56)
    return image


@pytest.mark.parametrize(
    "mode, file_name",
    [("1", "a.png"), ("1", "a.bmp"), ("L", "a.png"), ("L", "a.jpg"), ("LA", "a.png"), ("P", "a.png"),
     ("P", "a.gif"), ("P", "a.bmp"), ("RGB", "a.jpg"), ("RGB", "a.webp"), ("RGBA", "a.png"), ("RGBA", "a.webp"),
     ("CMYK", "a.jpg"), ("CMYK", "a.tif"), ("YCbCr", "a.tif"), ("LAB", "a.tif"), ("I", "a.tif"), ("F", "a.tif")],
)  # fmt: skip
def test_files_in_8_bit_modes_read_as_torchvision_reads_them(mode, file_name, tmp_path):
    path = tmp_path / file_name
    image = rgb_noise().convert(mode)
    if mode.endswith("A"):
        image.putalpha(Image.fromarray(np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH), np.uint8)))
    image.save(path)
    with Image.open(path) as opened:
        assert opened.mode in (mode, "RGB" if mode == "YCbCr" else mode)
    np.testing.assert_allclose(preprocess(path)[0], torchvision_reads(path), atol=1e-6)


def test_palette_with_transparency_reads_as_torchvision_reads_it_without_a_warning(tmp_path, recwarn):
    path = tmp_path / "t.png"
    palette_with_transparency().save(path, transparency=0)
    np.testing.assert_allclose(preprocess(path)[0], torchvision_reads(path), atol=1e-6)
    assert not [w for w in recwarn if "Palette images with Transparency" in str(w.message)]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"])
def test_pil_images_in_every_8_bit_mode(mode):
    image = rgb_noise().convert(mode) if mode != "La" else rgb_noise().convert("LA").convert("La")
    reference = image.convert("LA" if mode == "La" else mode).convert("RGB")
    np.testing.assert_allclose(preprocess(image)[0], torchvision_eval_transform(reference), atol=1e-6)


def sixteen_bit_gray(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)


@pytest.mark.parametrize("file_name", ["g.png", "g.tif"])
def test_16_bit_grayscale_keeps_its_top_8_bits(file_name, tmp_path):
    gray = sixteen_bit_gray()
    path = tmp_path / file_name
    Image.fromarray(gray).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I;16")
        assert (np.asarray(opened.convert("RGB")) == 255).mean() > 0.99  # torchvision's loader: a white picture
    expected = torchvision_eval_transform(Image.fromarray((gray >> 8).astype(np.uint8)).convert("RGB"))
    np.testing.assert_allclose(preprocess(path)[0], expected, atol=1e-6)


@pytest.mark.parametrize("dtype, mode_name", [(np.float32, "float"), (np.int32, "32-bit integer")])
def test_wide_images_outside_0_255_are_refused(dtype, mode_name, tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(sixteen_bit_gray().astype(dtype) - 100).save(path)
    with pytest.raises(ValueError, match=f"{path} is a {mode_name} image with values from -100.* expected 0-255"):
        preprocess(path)


@pytest.mark.parametrize("orientation, transpose", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270),
                                                     (8, Image.Transpose.ROTATE_90), (2, Image.Transpose.FLIP_LEFT_RIGHT)])  # fmt: skip
def test_exif_orientation_is_applied(orientation, transpose, tmp_path):
    stored = rgb_noise()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored.save(tmp_path / "photo.png", exif=exif)
    stored.save(tmp_path / "plain.png")
    upright = preprocess(tmp_path / "photo.png")
    np.testing.assert_allclose(upright[0], torchvision_eval_transform(stored.transpose(transpose)), atol=1e-6)
    with Image.open(tmp_path / "photo.png") as opened:
        np.testing.assert_array_equal(preprocess(opened), upright)
    np.testing.assert_array_equal(preprocess(tmp_path / "plain.png")[0], torchvision_reads(tmp_path / "plain.png"))


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch, capsys):
    rgb_noise().save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", WIDTH * HEIGHT // 3)  # PIL refuses over twice this
    with pytest.raises(ValueError, match=f"{tmp_path / 'big.png'} is too large for PIL.*MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "big.png")
    assert predict_cli.main([str(tmp_path / "big.png"), "--weights", str(tmp_path / "unused")]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "is too large for PIL" in captured.err


def test_a_directory_is_not_reported_as_missing(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} is a directory: expected an image file"):
        load_image(tmp_path)
    assert predict_cli.main([str(tmp_path)]) == 1
    assert "is a directory: expected an image file" in capsys.readouterr().err
