"""Every function and command that takes a path takes it relative, absolute, with `~` or as a pathlib.Path
(issue #10, item 3: a relative save_pretrained directory crashed inside Orbax)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from PIL import Image
from test_pretrained import assert_trees_equal, torchvision_pth, write_names

from flax_squeezenet import (
    create_model,
    imagenet_class_names,
    load_image,
    load_pretrained,
    load_pth,
    save_onnx,
    save_pretrained,
)
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.cli import predict as predict_cli
from flax_squeezenet.weights import preprocess

SPELLINGS = ["relative", "absolute", "home", "pathlib"]
NCNN = "pretrained/torchvision_squeezenet1_1.ncnn.param"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The working directory and $HOME are both tmp_path/home, so one name has every spelling."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FLAX_SQUEEZENET_CACHE", str(tmp_path / "cache"))
    return home


def spelled(name: str, spelling: str):
    """`name` (relative to the working directory, which is $HOME) spelled as `spelling` says."""
    return {
        "relative": name,
        "absolute": str(pathlib.Path.cwd() / name),
        "home": f"~/{name}",
        "pathlib": pathlib.Path(name),
    }[spelling]


@pytest.fixture
def saved(home):
    """A save_pretrained directory `runs/export` of a 3-class v1.1 and its variables."""
    model = create_model("squeezenet1_1", num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 17, 17, 3)))
    save_pretrained(home / "runs" / "export", variables, model="squeezenet1_1", num_classes=3)
    return "runs/export", variables


@pytest.fixture
def image(home):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(home / "photo.png")
    return "photo.png"


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_save_and_load_pretrained(spelling, saved, home):
    name, variables = saved
    module, loaded = load_pretrained(spelled(name, spelling))
    assert module.num_classes == 3
    assert_trees_equal(loaded, variables)
    written = save_pretrained(spelled("again", spelling), variables, model="squeezenet1_1", num_classes=3)
    assert written == home / "again"
    assert_trees_equal(load_pretrained(home / "again")[1], variables)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_pth_ncnn_and_cache_dir(spelling, home, tmp_path):
    torchvision_pth(home / "w.pth", "1_1")
    expected = load_pth(home / "w.pth")
    assert load_pth(spelled("w.pth", spelling)).keys() == expected.keys()
    assert_trees_equal(load_pretrained(spelled("w.pth", spelling))[1], load_pretrained(home / "w.pth")[1])
    for suffix in (".param", ".bin"):
        (home / f"m{suffix}").symlink_to(require_shared(NCNN).with_suffix(suffix))
    assert load_pretrained(spelled("m.param", spelling))[0].num_classes == 1000
    write_names(home / "names.txt", [f"n{i}" for i in range(1000)])
    assert imagenet_class_names(spelled("names.txt", spelling))[999] == "n999"


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_images_and_onnx(spelling, home, image):
    assert np.asarray(load_image(spelled(image, spelling))).shape == (40, 50, 3)
    np.testing.assert_array_equal(preprocess(spelled(image, spelling), resize_size=32, crop_size=32),
                                  preprocess(home / image, resize_size=32, crop_size=32))  # fmt: skip
    pytest.importorskip("onnx")
    model = create_model("squeezenet1_1", num_classes=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 17, 17, 3)))
    assert save_onnx(model, variables, spelled("out/m.onnx", spelling)) == home / "out" / "m.onnx"
    assert (home / "out" / "m.onnx").is_file()


@pytest.mark.parametrize("spelling", ["relative", "home"])
def test_commands_take_relative_and_home_paths(spelling, saved, image, home, capsys):
    name, _ = saved
    weights = str(spelled(name, spelling))
    assert predict_cli.main([str(spelled(image, spelling)), "--weights", weights, "--top", "2"]) == 0
    assert capsys.readouterr().out.startswith(str(spelled(image, spelling)))
    output = str(spelled("exported/m.onnx", spelling))
    assert export_cli.main(["--weights", weights, "--image-size", "17", "--output", output]) == 0
    assert (home / "exported" / "m.onnx").is_file()
    assert not (home / "~").exists()
