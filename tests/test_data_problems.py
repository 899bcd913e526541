"""Data problems that would change what is trained or measured are refused, or named, at the start.

Every case is built in a temporary folder (copies of ../shared where real files matter).
"""

import gzip
import io
import logging
import pathlib
import shutil
import struct

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image
from test_input_pipeline import make_config, write_image_folder

from train import evaluate, input_pipeline
from train.data import sources


@pytest.fixture
def folders(tmp_path):
    """Train (3 images per class) and eval (2) folders of the classes cat and dog, each with a notes.txt."""
    train = write_image_folder(tmp_path / "train")
    evaluation = write_image_folder(tmp_path / "eval", per_class=2)
    return make_config(dataset="image_folder", train_folder=str(train), eval_folder=str(evaluation), batch_size=2)


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: pathlib.Path, train: int = 6, test: int = 4, labels=None) -> pathlib.Path:
    """Tiny Fashion-MNIST idx files (28x28 images, labels 0-9 unless given) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        images_name, labels_name = sources.FASHION_MNIST_FILES[split]
        write_idx(folder / images_name, rng.integers(0, 256, (count, 28, 28)))
        write_idx(folder / labels_name, np.arange(count) % 10 if labels is None else np.asarray(labels))
    return folder


def fashion_config(folder, **overrides):
    return make_config(dataset="fashion_mnist", manual_dir=str(folder), image_size=None, **overrides)


def gz_damages(data: bytes) -> dict[str, bytes]:
    """Ways a downloaded .gz breaks: cut in its header, middle or trailer; its checksum or its deflate data damaged."""
    flipped = bytearray(data)
    flipped[-8] ^= 0xFF  # the CRC-32 of the uncompressed data
    garbled = bytearray(data)
    deflate_start = data.index(b"\0", 10) + 1 if data[3] & 0x08 else 10  # after the header and its file name
    garbled[deflate_start] |= 0b110  # block type 3: reserved, invalid
    return {"header": data[:5], "middle": data[: len(data) // 2], "trailer": data[:-3], "flipped": bytes(flipped),
            "garbled": bytes(garbled)}  # fmt: skip


@pytest.mark.parametrize("damage", ["header", "middle", "trailer", "flipped", "garbled"])
@pytest.mark.parametrize("which", [0, 1])  # the images file, the labels file
def test_a_damaged_idx_file_is_one_line_naming_it(tmp_path, damage, which):
    folder = write_fashion_mnist(tmp_path / "fm")
    path = folder / sources.FASHION_MNIST_FILES["train"][which]
    path.write_bytes(gz_damages(path.read_bytes())[damage])
    with pytest.raises(ValueError, match=path.name) as error:
        input_pipeline.dataset_info(fashion_config(folder))
    assert "\n" not in str(error.value)


def test_the_real_labels_file_cut_off_or_damaged_is_named(tmp_path):
    original = require_shared("data/fashion-mnist") / "train-labels-idx1-ubyte.gz"
    for damage, data in gz_damages(original.read_bytes()).items():
        path = tmp_path / f"{damage}-{original.name}"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=path.name):
            sources.read_idx(path)


def test_an_idx_file_whose_data_is_shorter_than_its_header_says_is_named(tmp_path):
    path = tmp_path / "labels.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + bytes(60))  # cut off, then gzipped
    with pytest.raises(ValueError, match=r"labels.gz holds 60 bytes of data.*\(100 bytes\): the file is cut off"):
        sources.read_idx(path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [(np.arange(5) % 10, "expected 6 labels"), ([0, 1, 2, 3, 4, 10], "holds label 10, expected labels 0-9")],
)
def test_idx_labels_must_match_the_images(tmp_path, labels, message):
    folder = write_fashion_mnist(tmp_path / "fm", labels=labels, test=len(labels))
    with pytest.raises(ValueError, match=f"train-labels-idx1-ubyte.gz.*{message}"):
        sources.read_fashion_mnist_split(folder, "train")


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("GIF", "gif"),
                                             ("WEBP", "webp"), ("TIFF", "tif")])  # fmt: skip
def test_a_cut_off_image_is_refused_naming_it_or_decodes_whole(tmp_path, fmt, suffix):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=1)
    path = tmp_path / "a" / f"cut.{suffix}"
    data = image_bytes(fmt)
    path.write_bytes(data)
    source = sources.ImageFolderSource(tmp_path, ("a", "b"))
    index = source.paths.index(str(path))
    whole = source[index]["image"]
    for cut in range(0, len(data), max(1, len(data) // 40)):
        path.write_bytes(data[:cut])
        try:
            image = source[index]["image"]
        except sources.UnreadableImageError as error:
            assert str(path) in str(error) and "\n" not in str(error)
        else:
            np.testing.assert_array_equal(image, whole)  # only a cut in trailing metadata may decode


def test_an_unreadable_eval_image_reaches_the_evaluate_cli_as_one_line(folders, monkeypatch, capsys):
    broken = pathlib.Path(folders.eval_folder) / "dog" / "cut.jpg"
    broken.write_bytes(image_bytes("JPEG")[:100])

    def evaluate_checkpoint(*args):  # the eval pass alone: no checkpoint needed
        return list(input_pipeline.create_eval_batches(folders))

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", evaluate_checkpoint)
    assert evaluate.main(["--workdir", "unused"]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "cut.jpg" in message and "Traceback" not in message


def test_an_empty_train_class_folder_is_refused_naming_it_and_the_classes(folders):
    empty = pathlib.Path(folders.train_folder) / "bird"
    empty.mkdir()
    (empty / "readme.txt").write_text("images to come")  # a folder of non-images is as empty
    with pytest.raises(ValueError, match=r"train_folder .*train: the class folders \['bird'\] hold no images.*"
                                         r"\['bird', 'cat', 'dog'\]"):  # fmt: skip
        input_pipeline.dataset_info(folders)


def test_an_eval_folder_lacking_a_class_and_ignored_files_are_named(folders, caplog):
    shutil.rmtree(pathlib.Path(folders.eval_folder) / "dog")
    (pathlib.Path(folders.train_folder) / "stray.jpg").write_bytes(image_bytes("JPEG"))  # outside any class folder
    with caplog.at_level(logging.WARNING, logger="train.data.sources"):
        info = input_pipeline.dataset_info(folders)
    assert info.class_names == ("cat", "dog")
    assert "has no images of the classes ['dog']" in caplog.text
    assert "ignoring 3 files" in caplog.text and ".jpg, .txt" in caplog.text  # stray.jpg and 2 notes.txt


@pytest.mark.parametrize("key", ["train_split", "eval_split"])
@pytest.mark.parametrize("dataset", ["synthetic", "image_folder", "fashion_mnist"])
def test_an_unknown_split_is_refused_naming_the_valid_ones(folders, tmp_path, dataset, key):
    configs = {
        "synthetic": lambda: make_config(**{key: "validation"}),
        "image_folder": lambda: make_config(**{**folders, key: "validation"}),
        "fashion_mnist": lambda: fashion_config(write_fashion_mnist(tmp_path / "fm"), **{key: "validation"}),
    }
    with pytest.raises(ValueError, match=f"{key} 'validation' is not a split of dataset '{dataset}': "
                                         "expected one of 'train', 'test'"):  # fmt: skip
        input_pipeline.dataset_info(configs[dataset]())


def test_the_train_split_can_be_evaluated_on_every_local_dataset(folders, tmp_path):
    for config in (make_config(), make_config(**folders), fashion_config(write_fashion_mnist(tmp_path / "fm"))):
        config.eval_split = "train"
        dataset = sources.open_dataset(input_pipeline.get_data_config(config).source)
        assert len(dataset.eval) == len(dataset.train)
        assert [dataset.eval[i]["label"] for i in range(3)] == [dataset.train[i]["label"] for i in range(3)]
        np.testing.assert_array_equal(dataset.eval[2]["image"], dataset.train[2]["image"])
