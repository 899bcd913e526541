"""Per-example image transforms: augmentation for training, deterministic resizing for evaluation.

Examples flow through as ``{"image": uint8 [H, W, C], "label": int}``. Geometry (crops, flips,
resizing) is done on uint8 with Pillow; the last step converts to float32 and normalises with the
dataset's per-channel mean and standard deviation (of pixel values scaled to [0, 1]).

``TrainTransform`` is a grain ``RandomMap``: grain hands it a ``np.random.Generator`` seeded from the
pipeline seed and the example's position in the repeated, shuffled stream, so every example of
every epoch gets its own reproducible randomness, and resuming a pipeline replays it exactly.
"""

from __future__ import annotations

import dataclasses
import math

import grain
import numpy as np
from PIL import Image

AUGMENTATIONS = ("crop_flip", "crop_flip_cutout", "crop", "flip", "random_resized_crop", "none")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What every example is turned into: the model's input size, channels and normalisation.

    ``augment`` selects the training augmentation (one of ``AUGMENTATIONS``):
      - "crop_flip": resize to ``image_size``, zero-pad by ``image_size // 8`` on each side, take a
        random ``image_size`` crop, flip left-right with probability 1/2 (the CIFAR recipe).
      - "crop_flip_cutout": "crop_flip", then a square of side ``image_size // 2`` centred on a random
        pixel (clipped at the borders) set to the dataset's mean colour (Cutout, DeVries & Taylor 2017).
      - "crop": the same without the flip.
      - "flip": resize to ``image_size`` and flip left-right with probability 1/2.
      - "random_resized_crop": a random crop of 8%-100% of the area with aspect ratio in
        [3/4, 4/3], resized to ``image_size``, plus a random flip (the ImageNet recipe).
      - "none": resize only.
    Evaluation resizes the shorter side to ``image_size / eval_crop_fraction`` and takes the central
    ``image_size`` square (``eval_crop_fraction`` 1.0: the whole image, resized to a square).
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    eval_crop_fraction: float


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """The uint8 [H, W, C] image with ``channels`` channels (gray is repeated; RGB becomes luminance)."""
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=-1)
    if have == 3 and channels == 1:
        return np.asarray(Image.fromarray(image).convert("L"))[:, :, None]
    if have == 4 and channels in (1, 3):
        return convert_channels(image[:, :, :3], channels)
    raise ValueError(f"cannot convert an image with {have} channels to {channels} channels")


def resize(
    image: np.ndarray, height: int, width: int, box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """The uint8 [H, W, C] image (or its ``box`` = (left, upper, right, lower)) resized bilinearly."""
    if box is None and image.shape[:2] == (height, width):
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    resized = np.asarray(pil.resize((width, height), Image.BILINEAR, box=box))
    return resized[:, :, None] if channels == 1 else resized


def pad_and_random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of the image's own size from the image zero-padded by ``padding`` on each side."""
    height, width = image.shape[:2]
    shift_y, shift_x = rng.integers(0, 2 * padding + 1, size=2) - padding  # crop offset in the unpadded image
    crop = np.zeros_like(image)
    crop[max(0, -shift_y) : height - max(0, shift_y), max(0, -shift_x) : width - max(0, shift_x)] = image[
        max(0, shift_y) : height + min(0, shift_y), max(0, shift_x) : width + min(0, shift_x)
    ]
    return crop


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image mirrored left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def cutout(image: np.ndarray, side: int, mean: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """The image with a ``side`` x ``side`` square around a random pixel, clipped at the borders, set to ``mean``.

    ``mean`` is per channel in [0, 1], so the square normalises to zero.
    """
    height, width = image.shape[:2]
    center_y, center_x = rng.integers(0, height), rng.integers(0, width)
    top, left = center_y - side // 2, center_x - side // 2
    erased = image.copy()
    erased[max(0, top) : top + side, max(0, left) : left + side] = np.round(np.asarray(mean) * 255)
    return erased


def random_resized_crop(
    image: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> np.ndarray:
    """Inception-style crop: a random box of ``scale`` x area and aspect ``ratio``, resized to ``size``.

    Falls back to the central crop with the aspect ratio clamped into ``ratio`` when ``attempts``
    draws all fall outside the image (as torchvision does).
    """
    height, width = image.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return resize(image, size, size, box=(left, top, left + crop_w, top + crop_h))
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return resize(image, size, size, box=(left, top, left + crop_w, top + crop_h))


def center_crop(image: np.ndarray, size: int, crop_fraction: float) -> np.ndarray:
    """Resize the shorter side to ``size / crop_fraction``, then take the central ``size`` square.

    With ``crop_fraction`` 1.0 the whole image is resized to ``size`` x ``size``.
    """
    if crop_fraction >= 1.0:
        return resize(image, size, size)
    height, width = image.shape[:2]
    crop = min(height, width) * crop_fraction
    top, left = (height - crop) / 2, (width - crop) / 2
    return resize(image, size, size, box=(left, top, left + crop, top + crop))


def normalize(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 (image / 255 - mean) / std, per channel."""
    scaled = image.astype(np.float32) * np.float32(1 / 255)
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def augment(image: np.ndarray, preprocessing: Preprocessing, rng: np.random.Generator) -> np.ndarray:
    """The uint8 training view of ``image``: ``preprocessing.augment`` applied at ``image_size``."""
    size = preprocessing.image_size
    if preprocessing.augment == "random_resized_crop":
        return random_flip(random_resized_crop(image, size, rng), rng)
    image = resize(image, size, size)
    if preprocessing.augment in ("crop", "crop_flip", "crop_flip_cutout"):
        image = pad_and_random_crop(image, max(1, size // 8), rng)
    if preprocessing.augment in ("crop_flip", "crop_flip_cutout", "flip"):
        image = random_flip(image, rng)
    if preprocessing.augment == "crop_flip_cutout":
        image = cutout(image, size // 2, preprocessing.mean, rng)
    return image


class TrainTransform(grain.transforms.RandomMap):
    """Example -> {"image": float32 [S, S, C] augmented and normalised, "label": int32}."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        p = self.preprocessing
        image = augment(convert_channels(element["image"], p.channels), p, rng)
        return {"image": normalize(image, p.mean, p.std), "label": np.int32(element["label"])}


class EvalTransform(grain.transforms.Map):
    """Example -> {"image": float32 [S, S, C] center-cropped and normalised, "label": int32, "mask": True}."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing

    def map(self, element: dict) -> dict:
        p = self.preprocessing
        image = center_crop(convert_channels(element["image"], p.channels), p.image_size, p.eval_crop_fraction)
        return {"image": normalize(image, p.mean, p.std), "label": np.int32(element["label"]), "mask": np.True_}


class PaddingExample(grain.transforms.Map):
    """Any index -> an all-zero example with mask False (fills the last eval batch)."""

    def __init__(self, preprocessing: Preprocessing):
        self.shape = (preprocessing.image_size, preprocessing.image_size, preprocessing.channels)

    def map(self, element: int) -> dict:
        del element
        return {"image": np.zeros(self.shape, np.float32), "label": np.int32(0), "mask": np.False_}
