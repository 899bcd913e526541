"""The input pipeline: grain pipelines over TFDS datasets, Fashion-MNIST files, image folders or synthetic data.

Config keys read (an ``ml_collections.ConfigDict``; an absent key takes its value in
``train/configs/default.py``, the one source of defaults; ``None`` means the dataset's own value, listed
below; all resolved once, in ``open_data``; other keys are ignored):

``dataset``
    "fashion_mnist", "cifar10", "imagenet2012", any other TFDS name, "image_folder" or "synthetic".
``data_dir``
    TFDS data dir (None: TFDS's default, ``~/tensorflow_datasets`` or ``$TFDS_DATA_DIR``).
``manual_dir``
    TFDS manual dir (raw files for datasets TFDS cannot download, e.g. ImageNet). For
    "fashion_mnist", a folder holding the four idx files (``train-images-idx3-ubyte.gz``, ...): they
    are read directly, without TFDS (see Sources below).
``train_folder`` / ``eval_folder``
    For "image_folder": folders with one subfolder of images per class (classes = sorted names).
``photos`` / ``holdout_fraction``
    For "image_folder": one folder with a subfolder of photos per class, split by the program into
    train and held-out ("test") photos, ``holdout_fraction`` of each class, stably by each photo's
    path (``train.data.photo_split``; a run writes its split to ``split.json``). Excludes
    ``train_folder`` / ``eval_folder``. Photos are decoded with their shorter side at most
    ``PHOTO_DECODE_SCALE * image_size`` pixels (phone photos are far larger than the model's input).
``cache_images``
    For "image_folder": decode every image once at start (in threads) and keep them in memory, for
    small datasets (CIFAR-10's 60,000 32x32 JPEGs take 184 MB). Epochs then skip
    decoding, and an unreadable image is reported at start rather than mid-run.
``train_split`` / ``eval_split`` ("train" / "test"; "validation" for imagenet2012)
    Split names (TFDS datasets also take slices such as "train[:90%]").
``image_size`` (the dataset's own: 28 Fashion-MNIST/MNIST, 32 CIFAR, 32 synthetic; else 224)
    Height and width of the batches the model receives; at least ``MIN_IMAGE_SIZE``.
``channels`` (None: the dataset's own)
    1 or 3; grayscale is repeated to 3 channels, RGB converted to luminance for 1.
``augment`` (None: "flip" for Fashion-MNIST, "crop_flip" for CIFAR, "crop" for MNIST, else
    "random_resized_crop")
    "crop_flip", "crop_flip_cutout", "crop", "flip", "random_resized_crop" or "none" (see
    ``train.data.transforms``). For Fashion-MNIST "flip": clothes are left-right symmetric, and the
    classes the model confuses (shirt, T-shirt, pullover, coat) gain from mirrored views, while random
    crops slowed learning more than the default 20 epochs allow (``train/configs/default.py``). Digits
    (MNIST) must not be mirrored: "crop".
``mean`` / ``std`` (None: the dataset's own per-channel statistics; ImageNet's for image folders and
    unlisted TFDS datasets, which is also what pretrained weights expect)
    Normalisation of pixel values scaled to [0, 1]; one value or one per channel.
``batch_size`` / ``eval_batch_size`` (None: ``batch_size``)
    Global batch sizes; each of ``process_count`` processes gets ``batch_size // process_count``.
``seed``
    Seeds shuffling (a new order every epoch) and augmentation; the data itself does not depend on it.
``num_workers``
    grain worker processes for the train pipeline (0: threads in this process). Workers are
    spawned: a script using them must guard its entry point with ``if __name__ == "__main__":``
    (unguarded, the workers die at start and grain 0.2.18 waits for them forever).
``prefetch``
    Batches prepared ahead of the train step (per worker when ``num_workers`` > 0).
``synthetic_train_examples`` / ``synthetic_eval_examples`` / ``synthetic_num_classes``
    Sizes of the "synthetic" dataset.

Sources:
  - "fashion_mnist" is read, in this order, from: ``manual_dir`` when it is set (its four idx files,
    read with a small numpy reader; an error names the missing files); else Debian's
    ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``) when installed; else
    TFDS, which downloads it (``data_dir``) but needs TensorFlow to prepare it. The choice is logged.
  - TFDS names go through ``tfds.data_source``-style random access (array_record): downloaded and
    prepared into ``data_dir`` on first use, with ``manual_dir`` as TFDS's manual download dir.
    Preparing needs TensorFlow; reading prepared data decodes images with Pillow.
  - "image_folder": ``train_folder`` and ``eval_folder``, each ``<class name>/<image>`` (subfolders
    of a class folder are searched too; files without an image extension are ignored). Images are
    decoded to RGB. An image that cannot be decoded stops the run with an ``UnreadableImageError``
    naming the file: skipping it would silently change the data and break exact resumption.
  - "synthetic": random images with a visible per-class pattern, for tests.
  ``open_data`` opens the dataset; a ``Data`` is what the pipelines below take (given a config
  instead, they open it themselves).

Train batches: the examples are shuffled (reshuffled every epoch) and repeated forever; element ``k``
of that global stream is augmented with randomness drawn from (seed, k). Global batch ``b`` is
elements ``[b * batch_size, (b + 1) * batch_size)``, and process ``p`` of ``n`` receives the ``p``-th
of its ``n`` equal slices, so the processes' shards are disjoint, together they are the whole
dataset, and the global batches (concatenated in process order) do not depend on ``n``; nor do
they depend on ``num_workers`` or ``prefetch``. The iterator's ``get_state()`` is a small dict to
store with a checkpoint; its layout depends on ``num_workers`` (0 or not) and ``process_count``,
so resume with the same values.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
from absl import flags

from train.configs import default
from train.data import photo_split, sources, transforms

_DEFAULTS = default.get_config()

MIN_IMAGE_SIZE = 8
PHOTO_DECODE_SCALE = 2  # photos are decoded with their shorter side at most this times image_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
    """What a dataset's missing config keys default to."""

    image_size: int = 224
    augment: str = "random_resized_crop"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    eval_split: str = "test"


KNOWN_DATASETS = {
    "fashion_mnist": DatasetDefaults(28, "flip", (0.2860,), (0.3530,)),
    "mnist": DatasetDefaults(28, "crop", (0.1307,), (0.3081,)),
    "cifar10": DatasetDefaults(32, "crop_flip", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetDefaults(32, "crop_flip", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": DatasetDefaults(eval_split="validation"),
    "synthetic": DatasetDefaults(32, "crop_flip", (0.5,), (0.25,)),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the trainer need to know about a dataset."""

    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the batches the model receives
    num_train_examples: int
    num_eval_examples: int
    class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Every data setting with its default resolved (see the module docstring)."""

    source: sources.SourceConfig
    preprocessing: transforms.Preprocessing
    batch_size: int
    eval_batch_size: int
    seed: int
    num_workers: int
    prefetch: int


def _value(config, key: str, default=None):
    """`config[key]`, or `train/configs/default.py`'s value when absent; `default` (the dataset's own) for None."""
    value = config[key] if key in config else _DEFAULTS.get(key)
    return default if value is None else value


def _stats(values, channels: int, key: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(values))
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if len(values) == 3 and channels == 1:
        return (sum(values) / 3,)
    raise ValueError(f"{key} has {len(values)} values, expected 1 or {channels} (one per channel)")


def _int(config, key: str, default: int | None = None, minimum: int = 1) -> int:
    value = _value(config, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{key} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def _photo_split(config, split: photo_split.PhotoSplit | None) -> photo_split.PhotoSplit | None:
    """`split`, or the split of config key `photos` by the hash rule; None without `photos`."""
    photos = _value(config, "photos")
    if photos is None:
        return None
    if _value(config, "dataset") != "image_folder":
        raise ValueError(f"config key photos needs dataset 'image_folder', got {_value(config, 'dataset')!r}")
    if _value(config, "train_folder") is not None or _value(config, "eval_folder") is not None:
        raise ValueError("config key photos (one folder, split by the program) excludes train_folder and eval_folder "
                         "(two folders, split by you): set one or the other")  # fmt: skip
    return split or photo_split.make_split(photos, _value(config, "holdout_fraction"))


def _source_config(config, split: photo_split.PhotoSplit | None = None) -> tuple[sources.SourceConfig, DatasetDefaults, int]:
    name = _value(config, "dataset")
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset must be a dataset name, got {name!r}")
    defaults = KNOWN_DATASETS.get(name, DatasetDefaults())
    image_size = _int(config, "image_size", defaults.image_size, MIN_IMAGE_SIZE)
    channels = config["channels"] if "channels" in config else None
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (the dataset's own), got {channels!r}")
    source = sources.SourceConfig(
        dataset=name,
        data_dir=_value(config, "data_dir"),
        manual_dir=_value(config, "manual_dir"),
        train_folder=_value(config, "train_folder"),
        eval_folder=_value(config, "eval_folder"),
        train_split=_value(config, "train_split", "train"),
        eval_split=_value(config, "eval_split", defaults.eval_split),
        cache_images=bool(_value(config, "cache_images")),
        synthetic_train_examples=_int(config, "synthetic_train_examples"),
        synthetic_eval_examples=_int(config, "synthetic_eval_examples"),
        synthetic_num_classes=_int(config, "synthetic_num_classes", minimum=2),
        synthetic_image_shape=(image_size, image_size, channels or 3),
        photo_split=_photo_split(config, split),
        decode_short_side=PHOTO_DECODE_SCALE * image_size,
    )
    return source, defaults, image_size


def _augment(config, defaults: DatasetDefaults) -> str:
    augment = _value(config, "augment", defaults.augment)
    if augment not in transforms.AUGMENTATIONS:
        raise ValueError(f"augment must be one of {transforms.AUGMENTATIONS}, got {augment!r}")
    return augment


def _data_config(config, source: sources.SourceConfig, defaults: DatasetDefaults, image_size: int,
                 channels: int) -> DataConfig:  # fmt: skip
    augment = _augment(config, defaults)
    preprocessing = transforms.Preprocessing(
        image_size=image_size,
        channels=channels,
        mean=_stats(_value(config, "mean", defaults.mean), channels, "mean"),
        std=_stats(_value(config, "std", defaults.std), channels, "std"),
        augment=augment,
        eval_crop_fraction=0.875 if augment == "random_resized_crop" else 1.0,
    )
    batch_size = _int(config, "batch_size")
    return DataConfig(
        source=source,
        preprocessing=preprocessing,
        batch_size=batch_size,
        eval_batch_size=_int(config, "eval_batch_size", batch_size),
        seed=_int(config, "seed", minimum=0),
        num_workers=_int(config, "num_workers", minimum=0),
        prefetch=_int(config, "prefetch"),
    )


@dataclasses.dataclass(frozen=True)
class Data:
    """A config's data settings, resolved and validated, with the dataset they open and its info."""

    settings: DataConfig
    dataset: sources.Dataset
    info: DatasetInfo


def open_data(config, split: photo_split.PhotoSplit | None = None) -> Data:
    """Resolve and check ``config``'s data keys (see the module docstring), then open the dataset once.

    With config key ``photos``, ``split`` is the split to train and evaluate on (a run's written
    one); None: the folder's split by the hash rule (`photo_split.make_split`)."""
    source, defaults, image_size = _source_config(config, split)
    channels = config["channels"] if "channels" in config else None
    _augment(config, defaults)
    _int(config, "batch_size")
    dataset = sources.open_dataset(source)
    settings = _data_config(config, source, defaults, image_size, channels or dataset.channels)
    info = DatasetInfo(
        num_classes=len(dataset.class_names),
        image_shape=(image_size, image_size, settings.preprocessing.channels),
        num_train_examples=len(dataset.train),
        num_eval_examples=len(dataset.eval),
        class_names=dataset.class_names,
    )
    return Data(settings=settings, dataset=dataset, info=info)


def _opened(data: Data | Any) -> Data:
    """``data`` itself, or the data a config describes, opened (tests and notebooks pass configs)."""
    return data if isinstance(data, Data) else open_data(data)


def get_data_config(config) -> DataConfig:
    """The data settings of ``config`` with every absent or None key set to its default, validated."""
    return open_data(config).settings


def dataset_info(config) -> DatasetInfo:
    """Classes, model input shape and split sizes of the configured dataset."""
    return open_data(config).info


def _local_batch_size(global_batch: int, key: str, process_index: int, process_count: int) -> int:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    if global_batch % process_count:
        raise ValueError(
            f"{key} (global) {global_batch} is not divisible by the {process_count} processes; "
            f"use a multiple of {process_count}"
        )
    return global_batch // process_count


def _read_options(prefetch: int) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=min(prefetch, os.cpu_count() or 1), prefetch_buffer_size=prefetch)


def create_train_iterator(data: Data | Any, *, process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """An endless iterator of this process's train batches, resumable with ``get_state``/``set_state``.

    Yields ``{"image": float32 [local_batch, S, S, C], "label": int32 [local_batch]}`` with
    ``local_batch = batch_size // process_count``; see the module docstring for how the global
    stream is shuffled, augmented and split between processes. Setting a state taken with
    ``get_state`` makes the iterator yield exactly the batches that followed when it was taken.
    """
    data = _opened(data)
    data_config, dataset = data.settings, data.dataset
    local_batch = _local_batch_size(data_config.batch_size, "batch_size", process_index, process_count)
    stream = (
        grain.MapDataset.source(dataset.train)
        .seed(data_config.seed)
        .shuffle()
        .repeat()
        .random_map(transforms.TrainTransform(data_config.preprocessing))
        .batch(local_batch, drop_remainder=True)
    )
    shard = stream[process_index::process_count].to_iter_dataset(_read_options(data_config.prefetch))
    if data_config.num_workers:
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()  # grain 0.2.18 reads its absl flags in mp_prefetch (google/grain#1355)
        shard = shard.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data_config.num_workers, per_worker_buffer_size=data_config.prefetch
            )
        )
    return iter(shard)


def create_eval_batches(data: Data | Any, *, process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
    """One pass over this process's share of the eval split, in order, without augmentation.

    Yields ``{"image": float32 [local_batch, S, S, C], "label": int32, "mask": bool}`` with
    ``local_batch = eval_batch_size // process_count``. The split is padded with masked-out
    (mask False) zero examples to a whole number of global batches, so every process yields the
    same number of batches and every real example appears exactly once with mask True.
    """
    data = _opened(data)
    data_config, dataset = data.settings, data.dataset
    local_batch = _local_batch_size(data_config.eval_batch_size, "eval_batch_size", process_index, process_count)
    num_examples = len(dataset.eval)
    padded_size = math.ceil(num_examples / data_config.eval_batch_size) * data_config.eval_batch_size
    parts = [grain.MapDataset.source(dataset.eval).map(transforms.EvalTransform(data_config.preprocessing))]
    if padded_size > num_examples:
        padding = grain.MapDataset.range(padded_size - num_examples)
        parts.append(padding.map(transforms.PaddingExample(data_config.preprocessing)))
    batches = grain.MapDataset.concatenate(parts).batch(local_batch)
    return iter(batches[process_index::process_count].to_iter_dataset(_read_options(data_config.prefetch)))


def sample_train_images(data: Data | Any, count: int) -> np.ndarray:
    """``count`` train images (a fixed choice: the first of the split shuffled with the config's seed),
    prepared as evaluation prepares images: float32 [count, S, S, C]. ValueError if the split is smaller."""
    data = _opened(data)
    if not 0 < count <= len(data.dataset.train):
        raise ValueError(f"expected 1 to {len(data.dataset.train)} train images, got {count}")
    chosen = grain.MapDataset.source(data.dataset.train).seed(data.settings.seed).shuffle()[:count]
    examples = chosen.map(transforms.EvalTransform(data.settings.preprocessing))
    return np.stack([example["image"] for example in examples])


def measure_throughput(data: Data | Any, num_batches: int = 20) -> float:
    """Images per second the train pipeline alone delivers in this process, with nothing consuming them.

    The batches the pipeline buffers while it starts (``prefetch`` per worker) are taken first, so
    the timed ``num_batches`` measure how fast batches are made, not how fast buffers are read.
    """
    data = _opened(data)
    data_config = data.settings
    iterator = create_train_iterator(data)
    try:
        for _ in range(1 + data_config.prefetch * max(1, data_config.num_workers)):
            batch_size = len(next(iterator)["label"])
        start = time.perf_counter()
        for _ in range(num_batches):
            next(iterator)
        elapsed = time.perf_counter() - start
    finally:
        iterator.close()
    return num_batches * batch_size / elapsed
