"""ImageNet evaluation preprocessing, as torchvision's weights expect it.

torchvision's `Resize(256)` (bilinear, on the shorter side), `CenterCrop(224)`, `ToTensor()` and
`Normalize(mean, std)`, done with PIL and NumPy and returned channels-last (NHWC float32).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_SIZE = 256
CROP_SIZE = 224

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def load_image(path: str | os.PathLike) -> Image.Image:
    """The RGB image in the file `path`; ValueError if it is not an image PIL can read."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not an image PIL can read: {error}") from None


def to_pil(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a path, a PIL image of any mode, or a uint8 array (H, W), (H, W, 1|3|4).

    Grayscale is replicated to RGB and an alpha channel dropped, as `Image.convert("RGB")` does.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
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
