"""Damaged checkpoints, caches and weight files give one clear error naming the file (issue #10, item 4)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from test_pretrained import assert_trees_equal, torchvision_pth

from flax_squeezenet import create_model, load_pretrained, save_pretrained
from flax_squeezenet.weights import pretrained

NCNN = "pretrained/torchvision_squeezenet1_1.ncnn.param"


@pytest.fixture
def checkpoint(tmp_path):
    model = create_model("squeezenet1_1", num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 17, 17, 3)))
    return save_pretrained(tmp_path / "ckpt", variables, model="squeezenet1_1", num_classes=3), variables


@pytest.mark.parametrize("victim", ["_METADATA", "manifest.ocdbt", "d"])
def test_missing_orbax_files_name_the_directory(checkpoint, victim):
    directory, _ = checkpoint
    path = directory / "variables" / victim
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(ValueError, match=f"{directory / 'variables'} is not a readable Orbax checkpoint"):
        load_pretrained(directory)


@pytest.mark.parametrize(
    "content, expected",
    [("{not json", "is not valid JSON"), ('["squeezenet1_1"]', "expected a JSON object"),
     ('{"model": "squeezenet9"}', '"model" is one of'), ('{"model": "squeezenet1_1", "model_kwargs": 3}', "model_kwargs")],
)  # fmt: skip
def test_corrupt_metadata_names_the_file(checkpoint, content, expected):
    directory, _ = checkpoint
    (directory / "metadata.json").write_text(content)
    with pytest.raises(ValueError, match=str(directory / "metadata.json")) as error:
        load_pretrained(directory)
    assert expected in str(error.value)


def test_changed_variables_fail_the_checksum(checkpoint):
    directory, variables = checkpoint
    other = jax.tree_util.tree_map(lambda leaf: leaf + 1, variables)
    save_pretrained(directory.parent / "other", other, model="squeezenet1_1", num_classes=3)
    shutil.rmtree(directory / "variables")
    shutil.copytree(directory.parent / "other" / "variables", directory / "variables")
    with pytest.raises(ValueError, match=f"{directory} is damaged: its variables do not match"):
        load_pretrained(directory)


def test_a_checkpoint_without_a_checksum_still_loads(checkpoint):
    directory, variables = checkpoint
    metadata = json.loads((directory / "metadata.json").read_text())
    del metadata["variables_sha256"]
    (directory / "metadata.json").write_text(json.dumps(metadata))
    assert_trees_equal(load_pretrained(directory)[1], variables)


@pytest.fixture
def cached_weights(tmp_path, monkeypatch):
    """Named weights served from a local file, loaded once into tmp_path/cache: (cache, variables)."""
    source = torchvision_pth(tmp_path / "published.pth", "1_1")
    weights = pretrained.PretrainedWeights("squeezenet1_1", source.as_uri(), "", 0.0, 0.0)
    monkeypatch.setitem(pretrained.PRETRAINED, "squeezenet1_1", weights)
    cache = tmp_path / "cache"
    return cache, load_pretrained("squeezenet1_1", cache_dir=cache)[1]


@pytest.mark.parametrize("damage", ["manifest", "metadata", "variables"])
def test_a_damaged_cache_is_rebuilt_from_the_cached_pth(cached_weights, tmp_path, damage):
    cache, expected = cached_weights
    (tmp_path / "published.pth").unlink()  # offline from now on: only the cached copy remains
    checkpoint = cache / "published"
    if damage == "manifest":
        (checkpoint / "variables" / "manifest.ocdbt").unlink()
    elif damage == "metadata":
        (checkpoint / "metadata.json").write_bytes(b"\x00\xff")
    else:
        shutil.rmtree(checkpoint / "variables")
    assert_trees_equal(load_pretrained("squeezenet1_1", cache_dir=cache)[1], expected)
    assert_trees_equal(load_pretrained("squeezenet1_1", cache_dir=cache)[1], expected)


def test_a_damaged_cache_without_its_source_says_what_to_delete(cached_weights, tmp_path):
    cache, _ = cached_weights
    (tmp_path / "published.pth").unlink()  # offline, and the cached copy is gone too
    (cache / "published.pth").unlink()
    (cache / "published" / "variables" / "_METADATA").unlink()
    with pytest.raises(ValueError) as error:
        load_pretrained("squeezenet1_1", cache_dir=cache)
    assert type(error.value).__name__ == "DamagedCheckpointError"
    message = str(error.value)
    assert f"cached weights {cache / 'published'} are damaged" in message
    assert f"delete {cache / 'published'}" in message
    assert "\n" not in message


def test_binary_junk_as_ncnn_param_names_the_file(tmp_path):
    (tmp_path / "m.param").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "m.bin").write_bytes(require_shared(NCNN).with_suffix(".bin").read_bytes())
    with pytest.raises(ValueError, match=f"{tmp_path / 'm.param'} is not an ncnn .param file: expected text"):
        load_pretrained(tmp_path / "m.param")


def test_binary_junk_as_class_names_names_the_file(tmp_path):
    from flax_squeezenet import imagenet_class_names

    (tmp_path / "names.txt").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=f"{tmp_path / 'names.txt'} is not a text file"):
        imagenet_class_names(tmp_path / "names.txt")


def test_num_classes_below_one_is_refused(checkpoint):
    directory, _ = checkpoint
    with pytest.raises(ValueError, match="num_classes must be at least 1, got 0"):
        load_pretrained(directory, num_classes=0)
    assert np.isfinite(np.asarray(load_pretrained(directory, num_classes=1)[1]["params"]["classifier"]["kernel"])).all()
