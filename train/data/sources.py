"""Random-access data sources: each split is a sequence of ``{"image": uint8 [H, W, C], "label": int}``.

Every source has ``__len__`` and ``__getitem__`` (grain's ``RandomAccessDataSource`` protocol), is
picklable (grain worker processes receive a copy), and reads nothing it does not need.

Data problems that would change what is trained or measured stop a run when its dataset is opened,
with a ``ValueError`` of one line naming the file, folder or config key: an unknown split (the idx
files, image folders and synthetic data have "train" and "test"; TFDS names its own), a cut-off or
corrupt idx file, a train class folder without images. An image that cannot be decoded raises
``UnreadableImageError`` (a ``ValueError``) naming it when it is read.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import importlib.util
import logging
import math
import os
import pathlib
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from train.data.photo_split import PhotoSplit

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IDX_SPLIT_NOTE = " (the idx files have no sliced splits such as 'train[:90%]': those need the TFDS copy)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Which data to read (see ``train.input_pipeline`` for the meaning and defaults of each key)."""

    dataset: str
    data_dir: str | None
    manual_dir: str | None
    train_folder: str | None
    eval_folder: str | None
    train_split: str
    eval_split: str
    cache_images: bool
    synthetic_train_examples: int
    synthetic_eval_examples: int
    synthetic_num_classes: int
    synthetic_image_shape: tuple[int, int, int]
    photo_split: "PhotoSplit | None" = None  # "image_folder" from one photos folder (train.data.photo_split)
    decode_short_side: int | None = None  # photos: decoded with their shorter side at most this many pixels


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Both splits of a dataset, its class names, its images' own channel count, and where it came from."""

    train: Sequence[dict]
    eval: Sequence[dict]
    class_names: tuple[str, ...]
    channels: int
    origin: str
    train_files: tuple[str, ...] = ()  # image folders: the train split's files, in order
    eval_files: tuple[str, ...] = ()


def check_split(dataset: str, key: str, split: str, valid: Sequence[str], note: str = "") -> None:
    """Raise a ``ValueError`` naming the valid splits unless ``split`` (the value of config ``key``) is one."""
    if split not in valid:
        raise ValueError(
            f"{key} {split!r} is not a split of dataset {dataset!r}: expected one of "
            f"{', '.join(map(repr, valid))}{note}"
        )


SYNTHETIC_SPLITS = ("train", "test")


class SyntheticSource:
    """``num_examples`` reproducible random images whose label is visible in them (so a model can learn).

    Example ``i`` of split ``split`` ("train" or "test") depends only on (split, i): a per-class
    template plus noise.
    """

    def __init__(self, num_examples: int, image_shape: tuple[int, int, int], num_classes: int, split: str):
        self.num_examples = num_examples
        self.image_shape = image_shape
        self.num_classes = num_classes
        self.split_id = SYNTHETIC_SPLITS.index(split)
        self.templates = np.random.default_rng(2024).integers(0, 256, size=(num_classes, *image_shape), dtype=np.uint8)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} synthetic examples")
        rng = np.random.default_rng([self.split_id, index])
        label = int(rng.integers(self.num_classes))
        noise = rng.integers(-64, 65, size=self.image_shape)
        image = np.clip(self.templates[label].astype(np.int32) // 2 + 64 + noise, 0, 255).astype(np.uint8)
        return {"image": image, "label": label}


def synthetic_dataset(config: SourceConfig) -> Dataset:
    """The synthetic splits ("train" or "test") that ``config`` names, the same for every seed.

    The seed drives shuffling and augmentation only.
    """
    sizes = {"train": config.synthetic_train_examples, "test": config.synthetic_eval_examples}
    splits = {}
    for key in ("train_split", "eval_split"):
        split = getattr(config, key)
        check_split(config.dataset, key, split, SYNTHETIC_SPLITS)
        splits[key] = SyntheticSource(sizes[split], config.synthetic_image_shape, config.synthetic_num_classes, split)
    return Dataset(
        train=splits["train_split"],
        eval=splits["eval_split"],
        class_names=tuple(f"class_{i}" for i in range(config.synthetic_num_classes)),
        channels=config.synthetic_image_shape[-1],
        origin=f"synthetic (splits {config.train_split!r}: {len(splits['train_split'])} examples, "
        f"{config.eval_split!r}: {len(splits['eval_split'])} examples)",
    )


class ArraySource:
    """Examples held in memory: ``images`` uint8 [N, H, W, C] (or a list of [H, W, C]), ``labels`` int [N]."""

    def __init__(self, images: np.ndarray | Sequence[np.ndarray], labels: np.ndarray):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.labels[index])}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The uint8 array in a gzipped IDX file (the MNIST format: magic 0x0000080N, N big-endian dims, data).

    The whole file is read and checked at once: a cut-off or corrupt file is a ``ValueError`` naming it.
    """
    try:
        with gzip.open(path, "rb") as file:
            data = file.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(
            f"{path} is not a complete gzip file ({error}): expected an official .gz idx file; download it again"
        ) from error
    ndim = data[3] if len(data) >= 4 else 0
    if data[:3] != b"\0\0\x08" or not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path} is not a uint8 IDX file (expected magic 0x00000801-0x00000804)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    payload = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if payload.size != math.prod(shape):
        raise ValueError(
            f"{path} holds {payload.size} bytes of data, its header promises shape {shape} "
            f"({math.prod(shape)} bytes): the file is cut off or corrupt; download it again"
        )
    return payload.reshape(shape)


def missing_fashion_mnist_files(folder: str | os.PathLike) -> list[str]:
    """The Fashion-MNIST idx file names absent from ``folder``."""
    names = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
    return [name for name in names if not (pathlib.Path(folder) / name).is_file()]


def read_fashion_mnist_split(folder: str | os.PathLike, split: str) -> ArraySource:
    """The "train" (60,000) or "test" (10,000) split from the official idx files in ``folder``.

    Raises a ``ValueError`` naming the file when the files do not hold matching images [N, H, W] and
    labels [N] in [0, 10).
    """
    check_split("fashion_mnist", "split", split, tuple(FASHION_MNIST_FILES), IDX_SPLIT_NOTE)
    images_path, labels_path = (pathlib.Path(folder) / name for name in FASHION_MNIST_FILES[split])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path} holds an array of shape {images.shape}, expected images [N, 28, 28]")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(
            f"{labels_path} holds an array of shape {labels.shape}, expected {len(images)} labels (one per image "
            f"of {images_path.name})"
        )
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(
            f"{labels_path} holds label {labels.max()}, expected labels 0-{len(FASHION_MNIST_CLASSES) - 1}"
        )
    return ArraySource(images[:, :, :, None], labels)


def fashion_mnist_dataset(config: SourceConfig) -> Dataset:
    """Fashion-MNIST from ``manual_dir``'s idx files, else Debian's copy, else TFDS (see the pipeline docs)."""
    if config.manual_dir is not None:
        missing = missing_fashion_mnist_files(config.manual_dir)
        if missing:
            raise FileNotFoundError(
                f"manual_dir {config.manual_dir} lacks the Fashion-MNIST files {missing}; get them from "
                "https://github.com/zalandoresearch/fashion-mnist (data/fashion) or unset manual_dir"
            )
        folder, origin = config.manual_dir, f"Fashion-MNIST idx files in {config.manual_dir}"
    elif not missing_fashion_mnist_files(DEBIAN_FASHION_MNIST_DIR):
        folder, origin = DEBIAN_FASHION_MNIST_DIR, f"Debian's dataset-fashion-mnist ({DEBIAN_FASHION_MNIST_DIR})"
    else:
        return tfds_dataset(config)
    for key in ("train_split", "eval_split"):
        check_split(config.dataset, key, getattr(config, key), tuple(FASHION_MNIST_FILES), IDX_SPLIT_NOTE)
    return Dataset(
        train=read_fashion_mnist_split(folder, config.train_split),
        eval=read_fashion_mnist_split(folder, config.eval_split),
        class_names=FASHION_MNIST_CLASSES,
        channels=1,
        origin=origin,
    )


class UnreadableImageError(ValueError):
    """An image file in an image folder could not be decoded."""


FOLDER_SPLITS = {"train": "train_folder", "test": "eval_folder"}


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """The files found under a class-per-folder directory, per class, and those that are not read."""

    images: dict[str, list[str]]  # class name -> sorted image paths
    ignored: list[str]  # non-hidden files that are not images by their extension, or lie outside any class folder


def list_class_folders(root: str | os.PathLike, class_names: Sequence[str]) -> FolderListing:
    """The image files under ``root/<class name>`` (searched recursively, sorted) and the files left out."""
    root = pathlib.Path(root)
    images: dict[str, list[str]] = {}
    ignored = [str(e.path) for e in os.scandir(root) if e.is_file() and not e.name.startswith(".")]
    for name in class_names:
        images[name] = []
        for directory, subdirs, files in os.walk(root / name):
            subdirs.sort()
            for file in sorted(f for f in files if not f.startswith(".")):
                is_image = file.lower().endswith(IMAGE_EXTENSIONS)
                (images[name] if is_image else ignored).append(os.path.join(directory, file))
    return FolderListing(images, sorted(ignored))


class ImageFolderSource:
    """The images of a class-per-folder directory, decoded to RGB on access.

    A file that cannot be decoded stops the pipeline with an ``UnreadableImageError`` naming it
    (remove or replace it and run again): skipping it silently would change the data and the
    order of every later batch, and so break exact resumption.
    """

    def __init__(self, root: str | os.PathLike, class_names: Sequence[str], listing: FolderListing | None = None,
                 short_side: int | None = None):  # fmt: skip
        listing = listing or list_class_folders(root, class_names)
        self.root = pathlib.Path(root)
        self.short_side = short_side
        self.paths = [path for name in class_names for path in listing.images[name]]
        self.labels = np.asarray(
            [label for label, name in enumerate(class_names) for _ in listing.images[name]], np.int64
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image = image if self.short_side is None else shrunk(image, self.short_side)
                pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            raise UnreadableImageError(f"cannot decode image {path}: {error}; remove or replace the file") from error
        return {"image": pixels, "label": int(self.labels[index])}


def shrunk(image: Image.Image, short_side: int) -> Image.Image:
    """`image` scaled down (never up) so its shorter side is at most `short_side` pixels; JPEGs are
    decoded at the nearest larger 1/2, 1/4 or 1/8 scale first (Pillow's draft), which is fast."""
    scale = short_side / min(image.size)
    if scale >= 1:
        return image
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image.draft("RGB", target)
    return image.resize(target, Image.BILINEAR, reducing_gap=2.0) if min(image.size) > short_side else image


def class_folders(root: str | os.PathLike) -> tuple[str, ...]:
    """The sorted names of the subfolders of ``root`` (hidden ones excluded)."""
    return tuple(sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")))


def check_image_folders(config: SourceConfig) -> tuple[str, ...]:
    """The class names (the train folder's subfolders) after checking both folders exist and the splits are known."""
    for key in ("train_split", "eval_split"):
        check_split(config.dataset, key, getattr(config, key), tuple(FOLDER_SPLITS))
    for key in FOLDER_SPLITS.values():
        folder = getattr(config, key)
        if folder is None:
            raise ValueError(f"dataset 'image_folder' needs {key}: a folder with one subfolder of images per class")
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{key} {folder} is not a folder")
    class_names = class_folders(config.train_folder)
    if len(class_names) < 2:
        raise ValueError(
            f"train_folder {config.train_folder} has {len(class_names)} class subfolders, expected at least 2"
        )
    unknown = sorted(set(class_folders(config.eval_folder)) - set(class_names))
    if unknown:
        raise ValueError(f"eval_folder {config.eval_folder} has classes absent from train_folder: {unknown}")
    return class_names


def report_listing(key: str, folder: str, listing: FolderListing, class_names: tuple[str, ...]) -> None:
    """Refuse a folder without images, and a train folder with an empty class; warn of what is left out.

    An eval folder may lack classes (a warning says which: its accuracy does not cover them); a
    train folder and a "photos" folder (split by the program) may not. Files that are not images by
    their extension, or lie outside the class folders, are named in a warning.
    """
    empty = [name for name in class_names if not listing.images[name]]
    if len(empty) == len(class_names):
        raise ValueError(f"{key} {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if empty and key in ("train_folder", "photos"):
        raise ValueError(
            f"{key} {folder}: the class folders {empty} hold no images ({', '.join(IMAGE_EXTENSIONS)}) "
            f"among the classes {list(class_names)}; a class without images cannot be learned: add images or "
            "remove the folder (the model's classes are its subfolders)"
        )
    if empty:
        logger.warning("%s %s has no images of the classes %s: its accuracy does not cover them", key, folder, empty)
    if listing.ignored:
        extensions = sorted({pathlib.Path(path).suffix.lower() or "(no extension)" for path in listing.ignored})
        logger.warning(
            "%s %s: ignoring %d files outside the class folders or without an image extension (%s), e.g. %s",
            key, folder, len(listing.ignored), ", ".join(extensions), listing.ignored[0],
        )  # fmt: skip


def image_folder_dataset(config: SourceConfig) -> Dataset:
    """Train and eval class-per-folder directories; the classes are the train folder's subfolders.

    The splits are "train" (``train_folder``) and "test" (``eval_folder``).
    """
    class_names = check_image_folders(config)
    folder_sources = {}
    for key in FOLDER_SPLITS.values():
        folder = getattr(config, key)
        listing = list_class_folders(folder, class_names)
        report_listing(key, folder, listing, class_names)
        folder_sources[key] = ImageFolderSource(folder, class_names, listing)
    origin = (
        f"image folders {config.train_folder} ({len(folder_sources['train_folder'])} images) and "
        f"{config.eval_folder} ({len(folder_sources['eval_folder'])} images)"
    )
    used = {FOLDER_SPLITS[config.train_split], FOLDER_SPLITS[config.eval_split]}
    listed = dict(folder_sources)
    if config.cache_images:
        folder_sources = {key: decode_all(folder_sources[key]) for key in used}
        origin += ", decoded once into memory"
    return Dataset(
        train=folder_sources[FOLDER_SPLITS[config.train_split]],
        eval=folder_sources[FOLDER_SPLITS[config.eval_split]],
        class_names=class_names,
        channels=3,
        origin=origin,
        train_files=tuple(listed[FOLDER_SPLITS[config.train_split]].paths),
        eval_files=tuple(listed[FOLDER_SPLITS[config.eval_split]].paths),
    )


def photos_dataset(config: SourceConfig) -> Dataset:
    """The train and held-out photos of ``config.photo_split`` (train.data.photo_split), decoded with
    their shorter side at most ``decode_short_side``; the splits are "train" and "test" (held out)."""
    split = config.photo_split
    for key in ("train_split", "eval_split"):
        check_split(config.dataset, key, getattr(config, key), tuple(FOLDER_SPLITS))
    root = pathlib.Path(split.photos)
    sides = {"train": split.train, "test": split.held_out}
    listed = {
        side: ImageFolderSource(root, split.class_names, FolderListing(
            {name: [str(root / p) for p in paths] for name, paths in zip(split.class_names, sides[side])}, []),
            short_side=config.decode_short_side)
        for side in (config.train_split, config.eval_split)
    }  # fmt: skip
    used = dict(listed)
    origin = (f"photos {split.photos}: {len(listed[config.train_split])} train, {len(listed[config.eval_split])} "
              f"held out ({split.holdout_fraction:g} of each class)")  # fmt: skip
    if config.cache_images:
        used = {side: decode_all(source) for side, source in listed.items()}
        origin += ", decoded once into memory"
    return Dataset(train=used[config.train_split], eval=used[config.eval_split], class_names=split.class_names,
                   channels=3, origin=origin, train_files=tuple(listed[config.train_split].paths),
                   eval_files=tuple(listed[config.eval_split].paths))  # fmt: skip


def decode_all(source: ImageFolderSource) -> ArraySource:
    """Every image of ``source`` decoded (in threads), stacked into one array when they share a shape."""
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        images = [example["image"] for example in pool.map(source.__getitem__, range(len(source)))]
    if len({image.shape for image in images}) == 1:
        images = np.stack(images)
    return ArraySource(images, source.labels)


class TfdsSource:
    """A TFDS ``data_source`` split, its records reduced to ``{"image", "label"}``."""

    def __init__(self, data_source, image_key: str, label_key: str):
        self.data_source = data_source
        self.image_key = image_key
        self.label_key = label_key

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index: int) -> dict:
        record = self.data_source[index]
        return {"image": record[self.image_key], "label": int(record[self.label_key])}


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported (TFDS needs it to prepare datasets, not to read them)."""
    return importlib.util.find_spec("tensorflow") is not None


def tfds_dataset(config: SourceConfig) -> Dataset:
    """A TFDS dataset read with ``tfds.data_source``, downloaded and prepared on first use."""
    import tensorflow_datasets as tfds  # noqa: PLC0415  (heavy: imported only when used)

    try:
        builder = tfds.builder(config.dataset, data_dir=config.data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"unknown dataset {config.dataset!r}: expected 'synthetic', 'image_folder', 'fashion_mnist' "
            "or a tensorflow-datasets name (tfds.list_builders())"
        ) from error
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if not builder.is_prepared():
        if not tensorflow_installed():
            raise FileNotFoundError(
                f"TFDS dataset {config.dataset!r} is not prepared in {builder.data_dir}, and TFDS needs TensorFlow "
                "to prepare it: pip install tensorflow-cpu, or prepare it once elsewhere and point data_dir there"
                + (
                    "; or set manual_dir to a folder holding the four Fashion-MNIST idx .gz files (no TFDS needed)"
                    if config.dataset == "fashion_mnist"
                    else ""
                )
            )
        logger.warning(
            "preparing TFDS dataset %s in %s (downloading it unless manual_dir %s holds the files)",
            config.dataset,
            builder.data_dir,
            config.manual_dir,
        )
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=config.manual_dir))
    splits = {
        split: TfdsSource(builder.as_data_source(split=split), image_key, label_key)
        for split in (config.train_split, config.eval_split)
    }
    image_shape = builder.info.features[image_key].shape
    return Dataset(
        train=splits[config.train_split],
        eval=splits[config.eval_split],
        class_names=tuple(builder.info.features[label_key].names),
        channels=int(image_shape[-1] or 3),
        origin=f"TFDS {config.dataset} in {builder.data_dir}",
    )


@functools.lru_cache(maxsize=4)
def open_dataset(config: SourceConfig) -> Dataset:
    """The dataset ``config`` names (opened once per process and configuration, then cached); logs its origin."""
    if config.dataset == "synthetic":
        dataset = synthetic_dataset(config)
    elif config.dataset == "image_folder" and config.photo_split is not None:
        dataset = photos_dataset(config)
    elif config.dataset == "image_folder":
        dataset = image_folder_dataset(config)
    elif config.dataset == "fashion_mnist":
        dataset = fashion_mnist_dataset(config)
    else:
        dataset = tfds_dataset(config)
    logger.info("%s: %s", config.dataset, dataset.origin)
    return dataset
