"""ImageNet evaluation preprocessing, as torchvision's weights expect it.

torchvision's `Resize(256)` (bilinear, on the shorter side), `CenterCrop(224)`, `ToTensor()` and
`Normalize(mean, std)`, done with PIL and NumPy and returned channels-last (NHWC float32).

Images become RGB as torchvision's ImageFolder loader makes them (`Image.convert("RGB")`: gray
replicated, alpha dropped, palettes looked up, CMYK/YCbCr/LAB/HSV converted), with two
differences where its result would be wrong (tests/test_image_modes.py):
- photos are turned upright as their EXIF orientation says, as every viewer shows them
  (torchvision's loader ignores the tag and feeds the model a rotated or mirrored picture);
- 16-bit grayscale (PNG/TIFF mode "I;16") keeps its top 8 bits, as PIL reads 16-bit colour
  (`convert("RGB")` clips it to 255: a white picture). 32-bit integer and float images ("I",
  "F") are read on the 0-255 scale and refused if their values leave it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flax_squeezenet.storage import files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_SIZE = 256
CROP_SIZE = 224

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Converted through an intermediate mode: PIL warns on palette transparency and has no La -> RGB.
CONVERSION_STEPS = {"P": "RGBA", "La": "LA"}


def _eight_bit(image: Image.Image, source: str) -> Image.Image:
    """`image` in a mode whose `convert("RGB")` is meaningful; ValueError naming `source` if none is."""
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        low, high = image.getextrema()
        if low < 0 or high > 255:
            raise ValueError(
                f"{source} is a {'float' if image.mode == 'F' else '32-bit integer'} image with values from "
                f"{low} to {high}: expected 0-255 (convert it to 8-bit RGB or grayscale first)"
            )
        return image
    return image.convert(CONVERSION_STEPS[image.mode]) if image.mode in CONVERSION_STEPS else image


def to_rgb(image: Image.Image, source: str = "the image") -> Image.Image:
    """`image` upright (EXIF orientation applied) and in RGB; ValueError naming `source` if its mode
    has no meaningful RGB reading."""
    eight_bit = _eight_bit(ImageOps.exif_transpose(image), source)
    try:
        return eight_bit.convert("RGB")
    except ValueError as error:
        raise ValueError(f"{source} has PIL mode {image.mode!r}, which cannot be read as RGB ({error})") from None


@contextlib.contextmanager
def _opened_image(path: str | os.PathLike) -> Iterator[tuple[Image.Image, str]]:
    """The image file `path` opened (decoded on demand) and its name; errors in the block name it."""
    resolved = files.user_path(path)
    if resolved.is_dir():
        raise FileNotFoundError(f"{path} is a directory: expected an image file")
    if not resolved.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(resolved) as image:
            yield image, str(resolved)
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{resolved} is too large for PIL ({error}); if you trust it, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{resolved} is not an image PIL can read: {error}") from None


def check_image(path: str | os.PathLike) -> None:
    """Raise as `load_image` would for a missing file or one that is not an image PIL can open,
    reading only the file's header."""
    with _opened_image(path):
        pass


def load_image(path: str | os.PathLike) -> Image.Image:
    """The RGB image in the file `path` (upright, see the module's notes).

    Raises FileNotFoundError if there is no such file (or it is a directory) and ValueError if it is
    not an image PIL can read, is larger than PIL's decompression-bomb limit, or its mode has no
    meaningful RGB reading.
    """
    with _opened_image(path) as (image, name):
        return to_rgb(image, name)


def to_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image of any mode, or a uint8 array (H, W), (H, W, 1|3|4).

    Grayscale is replicated to RGB and an alpha channel dropped, as `Image.convert("RGB")` does;
    files and PIL images are read as the module's notes say.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array (0-255), got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
            raise ValueError(f"expected an image array of shape (H, W) or (H, W, 1|3|4), got {image.shape}")
        return Image.fromarray(image).convert("RGB")
    raise ValueError(f"expected a file path, a PIL image or a uint8 array, got {type(image).__name__}")


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `size`, the longer truncated as torchvision does."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of torchvision's CenterCrop(size), offsets rounded half to even."""
    if size > min(width, height):
        raise ValueError(f"cannot center-crop {size}x{size} from a {width}x{height} image")
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def preprocess_one(
    image: ImageLike,
    *,
    resize_size: int = RESIZE_SIZE,
    crop_size: int = CROP_SIZE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """One image as a normalised (crop_size, crop_size, 3) float32 array."""
    if crop_size > resize_size:
        raise ValueError(f"expected crop_size <= resize_size, got {crop_size} > {resize_size}")
    pil = to_pil(image)
    pil = pil.resize(resized_size(*pil.size, resize_size), Image.BILINEAR)
    pil = pil.crop(center_crop_box(*pil.size, crop_size))
    pixels = np.asarray(pil, dtype=np.float32) / 255.0
    return (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess(images: ImageLike | Sequence[ImageLike], **options) -> np.ndarray:
    """A batch (N, 224, 224, 3) float32, NHWC, ready for a model pretrained on ImageNet.

    `images` is one image or a list of them: file paths, PIL images (any mode) or uint8 arrays;
    a uint8 array of rank 4 is a batch. `options` are those of `preprocess_one` (resize_size,
    crop_size, mean, std).
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("expected at least one image")
    return np.stack([preprocess_one(image, **options) for image in images])
