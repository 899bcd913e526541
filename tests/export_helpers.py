"""Helpers of the export tests: folders of calibration images, the export CLI's one-line errors, and
1-channel models saved without their input convention."""

import json

import numpy as np
from conftest import GREY
from PIL import Image

from flax_squeezenet import save_pretrained
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.weights.conventions import IMAGENET
from flax_squeezenet.weights.pretrained import METADATA_FILE


def write_images(folder, count, mode="RGB", size=40):
    """`count` random PNG images of `size` pixels in `folder` (created), in PIL `mode`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{i:03d}.png")
    return folder


def run_cli_error(capsys, *args, format="onnx"):
    """The one-line error `squeezenet-export` prints for a random 4-class model at 32 pixels with `args`."""
    code = export_cli.main(["--random-init", "--num-classes", "4", "--image-size", "32", "--format", format, *args])
    assert code == 1
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1, error
    return error


def save_grey_model_as_older_versions_did(directory, variables, **model_kwargs):
    """A 1-channel model's directory as `save_pretrained` wrote it before it refused to: with ImageNet's
    3-channel convention in its metadata."""
    saved = save_pretrained(directory, variables, model="squeezenet1_1", in_channels=1, preprocessing=GREY, **model_kwargs)
    metadata = json.loads((saved / METADATA_FILE).read_text())
    metadata["preprocessing"] = IMAGENET.to_dict()
    (saved / METADATA_FILE).write_text(json.dumps(metadata))
    return saved
