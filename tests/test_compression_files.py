"""Compressed files: .sqz round trips through load_pretrained, damaged files refused, the paper's .net written back."""

import hashlib
import json
import os
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GREY, require_shared

from flax_squeezenet import load_pretrained, save_pretrained
from flax_squeezenet.compression import compress, encoded_size, read_compressed, save_compressed
from flax_squeezenet.compression.finetune import distill_codebooks
from flax_squeezenet.weights.conventions import DEEP_COMPRESSION, IMAGENET, InputConvention
from flax_squeezenet.weights.deepcompression import load_deep_compression
from flax_squeezenet.weights.pretrained import input_convention
from flax_squeezenet.weights.sqz import encode_compressed
from flax_squeezenet.zoo.models import squeezenet1_0, squeezenet1_1

PAPER_FILE = "pretrained/deepcompression_squeezenet1_0.net"
PAPER_BYTES = 675_763


def assert_same_tree(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def random_checkpoint(directory: pathlib.Path, model, name: str) -> pathlib.Path:
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, model.in_channels)))
    kwargs = {"in_channels": model.in_channels, "num_classes": model.num_classes}
    return save_pretrained(directory, variables, model=name, preprocessing=GREY if model.in_channels == 1 else None,
                           **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A random 1-channel, 10-class squeezenet1_1 checkpoint, and it pruned to half and shared at 4 bits."""
    model = squeezenet1_1(num_classes=10, in_channels=1)
    directory = random_checkpoint(tmp_path_factory.mktemp("small") / "model", model, "squeezenet1_1")
    return directory, compress(directory, bits=4, density=0.5)


def test_sqz_round_trips_through_load_pretrained(small, tmp_path):
    directory, compressed = small
    path = save_compressed(compressed, tmp_path / "small.sqz")
    module, variables = load_pretrained(path)
    assert (module.in_channels, module.num_classes, module.stages) == (1, 10, squeezenet1_1().stages)
    assert_same_tree(variables["params"], compressed.params())
    for name, leaf in compressed.leaves.items():
        if name.endswith("kernel"):
            assert len(np.unique(leaf.dense())) <= 16
            assert np.count_nonzero(leaf.dense()) == round(0.5 * leaf.dense().size)
    assert path.stat().st_size == encoded_size(compressed)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_the_header_describes_the_model(small, tmp_path):
    _, compressed = small
    stored = read_compressed(save_compressed(compressed, tmp_path / "small.sqz"))
    described = (stored.model, stored.in_channels, stored.num_classes, stored.input_convention)
    assert described == ("squeezenet1_1", 1, 10, "torchvision")
    assert {leaf.bits for leaf in stored.leaves.values() if hasattr(leaf, "bits")} == {4}


def test_the_file_carries_the_weights_preprocessing(tmp_path):
    """A model trained on 32-pixel grey images keeps its input convention through compression, so
    predicting with or exporting the `.sqz` prepares images as its training did."""
    grey = InputConvention(mean=(0.29,), std=(0.35,), resize_size=32, crop_size=32, channel_order="L")
    model = squeezenet1_1(num_classes=10, in_channels=1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    directory = save_pretrained(tmp_path / "model", variables, model="squeezenet1_1", preprocessing=grey,
                                in_channels=1, num_classes=10)  # fmt: skip
    path = save_compressed(compress(directory, bits=4), tmp_path / "grey.sqz")
    assert input_convention(path) == read_compressed(path).preprocessing == grey


def test_a_file_without_stored_preprocessing_means_imagenets(small, tmp_path):
    """Files written before the header held the preprocessing still load, as ImageNet's convention."""
    data = encode_compressed(small[1])
    preamble = struct.Struct("<8sHHI")
    magic, version, zero, length = preamble.unpack_from(data)
    header = json.loads(data[preamble.size : preamble.size + length])
    del header["preprocessing"]
    encoded = json.dumps(header).encode()
    body = preamble.pack(magic, version, zero, len(encoded)) + encoded + data[preamble.size + length : -32]
    old = tmp_path / "old.sqz"
    old.write_bytes(body + hashlib.sha256(body).digest())
    assert input_convention(old) == IMAGENET
    assert_same_tree(load_pretrained(old)[1]["params"], small[1].params())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "truncated or altered"),
        (lambda data: data[:-1], "truncated or altered"),
        (lambda data: data[:5000] + bytes([data[5000] ^ 1]) + data[5001:], "truncated or altered"),
        (lambda data: b"NOTASQZ!" + data[8:], "not a compressed SqueezeNet file"),
        (lambda data: data[:8] + b"\x02" + data[9:], "version 2"),
        (lambda data: b"", "not a compressed SqueezeNet file"),
    ],
    ids=["half", "last-byte", "flipped-bit", "magic", "version", "empty"],
)
def test_damaged_files_are_refused_naming_the_file(small, tmp_path, damage, message):
    good = save_compressed(small[1], tmp_path / "good.sqz").read_bytes()
    bad = tmp_path / "bad.sqz"
    bad.write_bytes(damage(good))
    with pytest.raises(ValueError, match=message) as error:
        load_pretrained(bad)
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_a_failed_save_keeps_the_existing_file(small, tmp_path):
    path = tmp_path / "model.net"
    path.write_bytes(b"the user's file")
    with pytest.raises(ValueError, match="squeezenet1_0 with 3 input channels"):
        save_compressed(small[1], path)  # a 1-channel v1.1 does not fit the .net format
    assert path.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.net"]


def test_paper_file_written_back_decodes_to_identical_weights(tmp_path):
    paper = require_shared(PAPER_FILE)
    written = save_compressed(compress(paper), tmp_path / "copy.net")
    assert written.stat().st_size == PAPER_BYTES  # the same entries, fillers and layout
    caffe_params = [load_deep_compression(path, fold_input=False)[2] for path in (written, paper)]
    assert_same_tree(*caffe_params)
    assert_same_tree(load_pretrained(written)[1], load_pretrained(paper)[1])


def test_paper_file_huffman_coded_is_smaller_with_identical_weights(tmp_path):
    paper = require_shared(PAPER_FILE)
    path = save_compressed(compress(paper), tmp_path / "paper.sqz")
    assert path.stat().st_size < PAPER_BYTES
    assert input_convention(path) == DEEP_COMPRESSION  # the paper's 227-pixel crops travel with it
    assert_same_tree(load_pretrained(path)[1], load_pretrained(paper)[1])
    again = save_compressed(compress(path), tmp_path / "again.net")  # .sqz back to .net, still lossless
    assert_same_tree(load_pretrained(again)[1], load_pretrained(paper)[1])


@pytest.mark.slow
def test_torchvision_convention_weights_written_as_net(tmp_path):
    directory = random_checkpoint(tmp_path / "v1_0", squeezenet1_0(), "squeezenet1_0")
    compressed = compress(directory, input_convention="caffe_bgr", density=0.4)
    module, variables = load_pretrained(save_compressed(compressed, tmp_path / "random.net"))
    assert_same_tree(variables["params"]["fire5"], compressed.params()["fire5"])
    images = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
    expected = module.apply({"params": compressed.params()}, images)
    np.testing.assert_allclose(module.apply(variables, images), expected, rtol=1e-4, atol=1e-5)


def test_distilled_codebooks_move_the_logits_towards_the_reference(small):
    directory, compressed = small
    module, variables = load_pretrained(directory)
    images = np.random.default_rng(1).standard_normal((8, 32, 32, 1)).astype(np.float32)
    reference = np.asarray(module.apply(variables, images))

    def distance(candidate):
        return float(np.mean((np.asarray(module.apply({"params": candidate.params()}, images)) - reference) ** 2))

    tuned = distill_codebooks(module, compressed, reference, images, epochs=20, batch_size=8, learning_rate=1e-3)
    assert distance(tuned) < 0.8 * distance(compressed)
    for path, leaf in tuned.leaves.items():
        if path.endswith("kernel"):
            np.testing.assert_array_equal(leaf.indices, compressed.leaves[path].indices)
            assert leaf.codebook[0] == 0
