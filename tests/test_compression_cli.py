"""`squeezenet-compress`: writes a file load_pretrained reads; errors are one line and leave nothing behind."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared
from export_helpers import save_grey_model_as_older_versions_did
from PIL import Image

from flax_squeezenet import load_pretrained, save_pretrained
from flax_squeezenet.cli import compress as cli
from flax_squeezenet.weights.conventions import InputConvention
from flax_squeezenet.weights.pretrained import input_convention
from flax_squeezenet.zoo.models import squeezenet1_1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = squeezenet1_1(num_classes=5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return save_pretrained(tmp_path_factory.mktemp("cli") / "model", variables, model="squeezenet1_1", num_classes=5)


def test_compresses_to_a_file_load_pretrained_reads(checkpoint, tmp_path, capsys):
    output = tmp_path / "model.sqz"
    assert cli.main([str(checkpoint), "--output", str(output), "--bits", "3", "--density", "0.6"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {output}: {output.stat().st_size:,} bytes" in printed and "60.0% of conv weights kept" in printed
    _, variables = load_pretrained(output)
    kernel = np.asarray(variables["params"]["fire4"]["expand3x3"]["kernel"])
    assert len(np.unique(kernel)) <= 8 and np.count_nonzero(kernel) == round(0.6 * kernel.size)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "net"], "holds only squeezenet1_0"),
        (["--density", "1.5"], "--density must be in"),
        (["--bits", "9"], "1 to 8"),
    ],
)
def test_errors_are_one_line_and_write_nothing(checkpoint, tmp_path, capsys, extra, message):
    output = tmp_path / "out.file"
    assert cli.main([str(checkpoint), "--output", str(output), *extra]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_paper_file_to_net_is_lossless(tmp_path, capsys):
    paper = require_shared("pretrained/deepcompression_squeezenet1_0.net")
    output = tmp_path / "copy.net"
    assert cli.main([str(paper), "--output", str(output), "--format", "net"]) == 0
    assert "largest logit change on 4 random inputs: 0" in capsys.readouterr().out


def grey_photos(directory, count=3):
    paths = [directory / f"{i}.png" for i in range(count)]
    for i, path in enumerate(paths):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (28, 28), np.uint8)).save(path)
    return [str(path) for path in paths]


def test_images_are_prepared_as_the_weights_say(tmp_path, capsys):
    """A 1-channel model trained at 32 pixels fits and measures on its own kind of input."""
    grey = InputConvention(mean=(0.29,), std=(0.35,), resize_size=32, crop_size=32, channel_order="L")
    model = squeezenet1_1(num_classes=10, in_channels=1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    weights = save_pretrained(tmp_path / "model", variables, model="squeezenet1_1", preprocessing=grey,
                              in_channels=1, num_classes=10)  # fmt: skip
    output = tmp_path / "grey.sqz"
    assert cli.main([str(weights), "--output", str(output), "--bits", "6", "--images", *grey_photos(tmp_path)]) == 0
    assert "largest logit change on 3 images" in capsys.readouterr().out
    assert input_convention(output) == grey


def test_a_model_without_a_convention_for_its_channels_is_refused_before_compressing(tmp_path, capsys):
    model = squeezenet1_1(num_classes=10, in_channels=1)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    weights = save_grey_model_as_older_versions_did(tmp_path / "model", variables, num_classes=10)
    output = tmp_path / "grey.sqz"
    assert cli.main([str(weights), "--output", str(output), "--images", *grey_photos(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "1-channel model whose weights carry no input convention" in error and error.count("\n") == 1
    assert not output.exists()
