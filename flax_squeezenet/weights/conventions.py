"""The input convention each set of weights expects, so `preprocess` follows the weights.

An `InputConvention` says how an image becomes the model's input: shorter side resized to
`resize_size` (bilinear), center crop `crop_size`, scaled to [0, 1], channels in `channel_order`
("RGB", "BGR" or "L" for grayscale), then `(x - mean) / std` per channel in that order.
`pretrained.input_convention(name_or_path)` gives the one for any source `load_pretrained` reads: torchvision's
weights and their ncnn export use ImageNet's; the paper's Deep Compression file is fed 227-pixel
crops (its Caffe input scaling is folded into conv1); a `save_pretrained` directory or Hub repository
carries its own in its metadata (e.g. a Fashion-MNIST model: "L", 64 px, the dataset's statistics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from PIL import Image

from flax_squeezenet.weights.preprocess import (
    CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_SIZE,
    center_crop_box,
    preprocess,
    resized_size,
    to_pil,
)

ChannelOrder = Literal["RGB", "BGR", "L"]
CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}
PREPROCESSING_KEY = "preprocessing"


@dataclasses.dataclass(frozen=True)
class InputConvention:
    """How images are prepared for a model (see the module docstring); validated on creation."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    resize_size: int = RESIZE_SIZE
    crop_size: int = CROP_SIZE
    channel_order: ChannelOrder = "RGB"

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNELS:
            raise ValueError(f"expected channel_order 'RGB', 'BGR' or 'L', got {self.channel_order!r}")
        channels = CHANNELS[self.channel_order]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"expected {channels} mean and std values for {self.channel_order}, "
                             f"got mean {self.mean} and std {self.std}")  # fmt: skip
        if not all(value > 0 for value in self.std):
            raise ValueError(f"expected positive std values, got {self.std}")
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(f"expected 0 < crop_size <= resize_size, got {self.crop_size} and {self.resize_size}")

    @property
    def channels(self) -> int:
        return CHANNELS[self.channel_order]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with saved weights."""
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "the metadata") -> InputConvention:
        """The convention stored by `to_dict`; ValueError naming `source` if it is not one."""
        fields = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(values, Mapping) or not set(values) <= fields:
            raise ValueError(f"{source}: expected \"{PREPROCESSING_KEY}\" to have keys among {sorted(fields)}, got {values!r}")
        try:
            converted = {key: tuple(map(float, value)) if key in ("mean", "std") else value for key, value in values.items()}
            return cls(**converted)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: invalid \"{PREPROCESSING_KEY}\": {error}") from None

    def preprocess(self, images: Any) -> np.ndarray:
        """A float32 NHWC batch from one image or a list (paths, PIL images, uint8 arrays), as
        `flax_squeezenet.preprocess` takes them."""
        if self.channel_order == "L":
            batch = images if isinstance(images, (list, tuple)) or getattr(images, "ndim", 0) == 4 else [images]
            if len(batch) == 0:
                raise ValueError("expected at least one image")
            return np.stack([self._grayscale(image) for image in batch])
        order = slice(None, None, -1) if self.channel_order == "BGR" else slice(None)
        rgb = preprocess(
            images, resize_size=self.resize_size, crop_size=self.crop_size, mean=self.mean[order], std=self.std[order]
        )
        return rgb[..., order]

    def _grayscale(self, image: Any) -> np.ndarray:
        pil = to_pil(image).convert("L")
        pil = pil.resize(resized_size(*pil.size, self.resize_size), Image.BILINEAR)
        pil = pil.crop(center_crop_box(*pil.size, self.crop_size))
        pixels = np.asarray(pil, dtype=np.float32)[..., None] / 255.0
        return (pixels - np.float32(self.mean[0])) / np.float32(self.std[0])


IMAGENET = InputConvention()
DEEP_COMPRESSION = InputConvention(crop_size=227)
