"""Tests of train.input_pipeline and its sources (tiny data; real data only where ../shared has it)."""

import gzip
import pathlib

import ml_collections
import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from train import input_pipeline
from train.data import sources, transforms


def make_config(**overrides) -> ml_collections.ConfigDict:
    config = {"dataset": "synthetic", "image_size": 8, "batch_size": 8, "seed": 0, "prefetch": 2}
    config.update(overrides)
    return ml_collections.ConfigDict(config)


class IndexSource:
    """Example i is an 8x8 gray image filled with i, labelled i % 10: the pipeline's output names its input."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return {"image": np.full((8, 8, 1), index, np.uint8), "label": index % 10}


@pytest.fixture
def indexed(monkeypatch):
    """Make the "indexed" dataset: 24 train and 21 eval examples whose image value is their index."""
    real_open = sources.open_dataset

    def open_dataset(config):
        if config.dataset != "indexed":
            return real_open(config)
        return sources.Dataset(IndexSource(24), IndexSource(21), tuple("abcdefghij"), 1, "indexed")

    monkeypatch.setattr(sources, "open_dataset", open_dataset)
    return make_config(dataset="indexed", augment="none", mean=0.0, std=1.0, eval_batch_size=8)


def example_indices(batch) -> list[int]:
    """The source index of each example of a batch from the "indexed" dataset (mask False dropped)."""
    values = np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int)
    return values[batch.get("mask", np.ones(len(values), bool))].tolist()


def take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def assert_same_batches(first: list[dict], second: list[dict]):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_synthetic_train_batches_have_the_promised_shapes_and_dtypes():
    batch = next(input_pipeline.create_train_iterator(make_config(channels=1)))
    assert batch["image"].shape == (8, 8, 8, 1)
    assert batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,)
    assert batch["label"].dtype == np.int32
    assert np.all((batch["label"] >= 0) & (batch["label"] < 10))


def test_dataset_info_describes_the_batches():
    info = input_pipeline.dataset_info(make_config(image_size=12, synthetic_num_classes=4, synthetic_train_examples=40))
    assert info.image_shape == (12, 12, 3)
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (4, 40, 100)
    assert len(info.class_names) == 4


def test_train_stream_is_deterministic_for_a_seed_and_changes_with_it():
    first = take(input_pipeline.create_train_iterator(make_config(seed=3)), 3)
    again = take(input_pipeline.create_train_iterator(make_config(seed=3)), 3)
    other = take(input_pipeline.create_train_iterator(make_config(seed=4)), 3)
    assert_same_batches(first, again)
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_resuming_from_a_state_replays_the_following_batches():
    config = make_config(synthetic_train_examples=20)  # 2.5 batches an epoch: resume crosses epochs
    iterator = input_pipeline.create_train_iterator(config)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 5)
    fresh = input_pipeline.create_train_iterator(config)
    fresh.set_state(state)
    assert_same_batches(take(fresh, 5), expected)


def test_worker_processes_give_the_same_batches_and_resume():
    config = make_config(synthetic_train_examples=20)
    expected = take(input_pipeline.create_train_iterator(config), 5)
    workers = input_pipeline.create_train_iterator(make_config(synthetic_train_examples=20, num_workers=2))
    try:
        assert_same_batches(take(workers, 2), expected[:2])
        state = workers.get_state()
        assert_same_batches(take(workers, 3), expected[2:])
    finally:
        workers.close()
    resumed = input_pipeline.create_train_iterator(make_config(synthetic_train_examples=20, num_workers=2))
    try:
        resumed.set_state(state)
        assert_same_batches(take(resumed, 3), expected[2:])
    finally:
        resumed.close()


def test_every_epoch_is_a_new_permutation_of_the_whole_train_split(indexed):
    batches = take(input_pipeline.create_train_iterator(indexed), 6)  # 2 epochs of 24
    epochs = [sum((example_indices(b) for b in batches[i : i + 3]), []) for i in (0, 3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(24))
    assert epochs[0] != epochs[1]


def test_two_processes_get_disjoint_halves_of_each_global_batch(indexed):
    single = take(input_pipeline.create_train_iterator(indexed), 3)
    shards = [take(input_pipeline.create_train_iterator(indexed, process_index=p, process_count=2), 3) for p in (0, 1)]
    assert shards[0][0]["image"].shape[0] == 4
    for step in range(3):
        halves = [example_indices(shards[p][step]) for p in (0, 1)]
        assert not set(halves[0]) & set(halves[1])
        assert halves[0] + halves[1] == example_indices(single[step])
    seen = sorted(i for shard in shards for batch in shard for i in example_indices(batch))
    assert seen == list(range(24))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_pass_counts_every_example_once_with_padding_masked(indexed, process_count):
    per_process = [
        list(input_pipeline.create_eval_batches(indexed, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    assert len({len(batches) for batches in per_process}) == 1  # same number of steps everywhere
    assert len(per_process[0]) == 3  # 21 examples in global batches of 8: 3 batches, 3 padded
    for batches in per_process:
        assert all(b["image"].shape[0] == 8 // process_count for b in batches)
    seen = sorted(i for batches in per_process for b in batches for i in example_indices(b))
    assert seen == list(range(21))
    assert sum(int(b["mask"].sum()) for batches in per_process for b in batches) == 21


def test_eval_is_deterministic_and_unaugmented():
    config = make_config(augment="crop_flip")
    first, again = (list(input_pipeline.create_eval_batches(config)) for _ in range(2))
    assert_same_batches(first, again)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "no_such_dataset_xyz"}, "no_such_dataset_xyz"),
        ({"image_size": 4}, "image_size"),
        ({"augment": "mixup"}, "augment"),
        ({"channels": 2}, "channels"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_named_in_the_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        input_pipeline.dataset_info(make_config(**overrides))


def test_global_batch_not_divisible_by_processes_is_an_error():
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        input_pipeline.create_train_iterator(make_config(batch_size=8), process_index=0, process_count=3)


def test_fashion_mnist_idx_files_read_directly(shared):
    folder = require_shared("data/fashion-mnist")
    train = sources.read_fashion_mnist_split(folder, "train")
    test = sources.read_fashion_mnist_split(folder, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    for split in (train, test):
        counts = np.bincount(split.labels, minlength=10)
        assert len(counts) == 10 and np.all(counts == len(split) // 10)  # balanced, labels in [0, 10)
    assert 0.28 < train.images.mean() / 255 < 0.29  # the published mean, also used for normalisation
    assert train.images[:, 0, 0].mean() < 1 < 100 < train.images[:, 14, 14].mean()  # dark corner, bright middle
    assert train.labels[0] == 9  # the well-known first training image: an ankle boot


def test_fashion_mnist_config_uses_manual_dir_without_tfds(shared):
    config = make_config(dataset="fashion_mnist", manual_dir=str(require_shared("data/fashion-mnist")), image_size=None)
    info = input_pipeline.dataset_info(config)
    assert info.image_shape == (28, 28, 1)
    assert (info.num_train_examples, info.num_eval_examples) == (60000, 10000)
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    batch = next(input_pipeline.create_train_iterator(config))
    assert batch["image"].shape == (8, 28, 28, 1)
    rgb = next(input_pipeline.create_eval_batches(make_config(**{**config, "channels": 3, "image_size": 32})))
    assert rgb["image"].shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(rgb["image"][..., 0], rgb["image"][..., 2])  # gray repeated


def test_fashion_mnist_falls_back_to_debians_copy_without_manual_dir(shared, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(require_shared("data/fashion-mnist")))
    source_config = input_pipeline.get_data_config(make_config(dataset="fashion_mnist", channels=1)).source
    dataset = sources.fashion_mnist_dataset(source_config)
    assert "Debian" in dataset.origin
    assert (len(dataset.train), len(dataset.eval)) == (60000, 10000)


def test_idx_reader_rejects_a_file_that_is_not_idx(tmp_path):
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as file:
        file.write(b"not an idx file")
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        sources.read_idx(path)
    path.write_bytes(b"\0\0\x08\x01 raw, not gzipped")
    with pytest.raises(ValueError, match="not a complete gzip file"):
        sources.read_idx(path)


def test_manual_dir_without_the_fashion_mnist_files_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        input_pipeline.dataset_info(make_config(dataset="fashion_mnist", manual_dir=str(tmp_path)))


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=(10, 12)):
    """Class folders of small PNG and JPEG images; the first pixel of each image is its class index * 100."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            pixels[0, 0] = label * 100
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
        (root / name / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def folders(tmp_path):
    train = write_image_folder(tmp_path / "train")
    evaluation = write_image_folder(tmp_path / "eval", per_class=2)
    return make_config(dataset="image_folder", train_folder=str(train), eval_folder=str(evaluation), batch_size=2)


def test_image_folder_classes_are_sorted_subfolders_and_images_decode(folders):
    info = input_pipeline.dataset_info(folders)
    assert info.class_names == ("cat", "dog")
    assert (info.num_train_examples, info.num_eval_examples) == (6, 4)
    assert info.image_shape == (8, 8, 3)
    source = sources.open_dataset(input_pipeline.get_data_config(folders).source).train
    assert [source[i]["label"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert source[4]["image"].shape == (10, 12, 3) and source[4]["image"][0, 0, 0] == 100  # a lossless PNG
    batches = list(input_pipeline.create_eval_batches(folders))
    assert [b["label"].tolist() for b in batches] == [[0, 0], [1, 1]]
    assert next(input_pipeline.create_train_iterator(folders))["image"].shape == (2, 8, 8, 3)


def test_an_unreadable_image_stops_the_pipeline_naming_the_file(folders):
    broken = pathlib.Path(folders.train_folder) / "dog" / "9.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    source = sources.open_dataset(input_pipeline.get_data_config(folders).source).train
    with pytest.raises(sources.UnreadableImageError, match="9.jpg"):
        source[source.paths.index(str(broken))]
    with pytest.raises(sources.UnreadableImageError, match="9.jpg"):
        take(input_pipeline.create_train_iterator(folders), 4)  # 4 batches of 2 read all 7 files


def test_cached_image_folders_give_the_same_batches(folders):
    cached = make_config(**{**folders, "cache_images": True})
    assert isinstance(sources.open_dataset(input_pipeline.get_data_config(cached).source).train, sources.ArraySource)
    for create in (input_pipeline.create_train_iterator, input_pipeline.create_eval_batches):
        assert_same_batches(take(create(cached), 2), take(create(folders), 2))


def test_an_unreadable_image_is_reported_at_start_when_caching(folders):
    (pathlib.Path(folders.eval_folder) / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(sources.UnreadableImageError, match="broken.png"):
        input_pipeline.dataset_info(make_config(**{**folders, "cache_images": True}))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda c, root: c.update(train_folder=str(root / "absent")), FileNotFoundError, "absent is not a folder"),
        (lambda c, root: c.update(eval_folder=None), ValueError, "needs eval_folder"),
        (lambda c, root: (root / "eval" / "bird").mkdir(), ValueError, "absent from train_folder"),
        (
            lambda c, root: (
                (root / "empty" / "cat").mkdir(parents=True)
                or (root / "empty" / "dog").mkdir()
                or c.update(train_folder=str(root / "empty"))
            ),
            ValueError,
            "holds no images",
        ),
    ],
)
def test_image_folder_problems_are_named(folders, tmp_path, change, error, message):
    change(folders, tmp_path)
    with pytest.raises(error, match=message):
        input_pipeline.dataset_info(folders)


def test_cifar10_jpeg_folders_list_ten_classes(shared):
    root = require_shared("data/cifar10-jpeg")
    class_names = sources.class_folders(root / "train")
    assert class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    for split, per_class in (("train", 5000), ("test", 1000)):
        source = sources.ImageFolderSource(root / split, class_names)
        assert np.all(np.bincount(source.labels) == per_class)
    assert source[0]["image"].shape == (32, 32, 3)


def test_tfds_datasets_are_read_through_data_source(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "tensorflow_installed", lambda: True)  # mock_data prepares without TensorFlow
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        config = make_config(dataset="cifar10", batch_size=4, image_size=None)
        info = input_pipeline.dataset_info(config)
        assert info.image_shape == (32, 32, 3)
        assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 12, 12)
        assert next(input_pipeline.create_train_iterator(config))["image"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("seed", range(20))
def test_pad_and_random_crop_is_a_crop_of_the_zero_padded_image(seed):
    image = np.random.default_rng(100).integers(1, 256, size=(7, 9, 2), dtype=np.uint8)
    crop = transforms.pad_and_random_crop(image, 3, np.random.default_rng(seed))
    top, left = np.random.default_rng(seed).integers(0, 7, size=2)  # the same draw
    padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))
    np.testing.assert_array_equal(crop, padded[top : top + 7, left : left + 9])


def test_flip_augmentation_resizes_and_mirrors_only():
    image = np.random.default_rng(0).integers(0, 256, size=(6, 6, 1), dtype=np.uint8)
    preprocessing = transforms.Preprocessing(6, 1, (0.0,), (1.0,), "flip", 1.0)
    views = {transforms.augment(image, preprocessing, np.random.default_rng(seed)).tobytes() for seed in range(20)}
    assert views == {image.tobytes(), image[:, ::-1].tobytes()}


def test_cutout_sets_one_clipped_square_around_a_random_pixel_to_the_mean_colour():
    image = np.full((8, 8, 3), 255, np.uint8)
    fill = (0.2, 0.4, 0.6)
    areas = set()
    for seed in range(60):
        erased = transforms.cutout(image, 4, fill, np.random.default_rng(seed))
        rows, cols = np.nonzero((erased != 255).any(axis=-1))
        assert (erased[rows, cols] == (51, 102, 153)).all()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height <= 4 and width <= 4 and len(rows) == height * width  # one rectangle, no holes
        areas.add(len(rows))
    assert 16 in areas and min(areas) < 16  # whole inside the image, and clipped at a border


def test_cutout_augmentation_is_crop_flip_plus_a_mean_square():
    image = np.full((8, 8, 1), 200, np.uint8)
    preprocessing = transforms.Preprocessing(8, 1, (0.5,), (1.0,), "crop_flip_cutout", 1.0)
    views = [transforms.augment(image, preprocessing, np.random.default_rng(seed)) for seed in range(20)]
    assert all((view == 128).sum() >= 4 for view in views)  # the square; crop padding is 0, the image 200
    assert any((view == 0).any() for view in views)


def test_random_resized_crop_boxes_lie_inside_the_image_and_fall_back_to_the_center():
    image = np.random.default_rng(0).integers(0, 256, size=(10, 40, 3), dtype=np.uint8)
    for seed in range(20):
        assert transforms.random_resized_crop(image, 6, np.random.default_rng(seed)).shape == (6, 6, 3)
    impossible = transforms.random_resized_crop(image, 6, np.random.default_rng(0), scale=(2.0, 3.0))
    central_box = (13, 0, 26, 10)  # aspect 40/10 clamped to 4/3: a 13x10 box in the middle
    np.testing.assert_array_equal(impossible, transforms.resize(image, 6, 6, box=central_box))


def test_center_crop_keeps_the_central_fraction():
    image = np.zeros((8, 8, 1), np.uint8)
    image[2:6, 2:6] = 255
    np.testing.assert_array_equal(transforms.center_crop(image, 4, 0.5), np.full((4, 4, 1), 255))
    assert transforms.center_crop(image, 5, 1.0).shape == (5, 5, 1)


def test_channels_are_converted_both_ways():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    np.testing.assert_array_equal(transforms.convert_channels(gray, 3), np.repeat(gray, 3, axis=-1))
    red = np.zeros((2, 2, 4), np.uint8)
    red[..., 0] = 255
    assert transforms.convert_channels(red, 3).shape == (2, 2, 3)
    assert transforms.convert_channels(red, 1)[0, 0, 0] == 76  # ITU-R 601 luma of pure red


def test_an_unprepared_tfds_dataset_without_tensorflow_is_a_clear_error(monkeypatch, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(sources, "tensorflow_installed", lambda: False)
    with pytest.raises(FileNotFoundError, match="needs TensorFlow"):
        input_pipeline.dataset_info(make_config(dataset="mnist", data_dir=str(tmp_path)))
