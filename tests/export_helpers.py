"""Helpers of the export tests: folders of calibration images and the export CLI's one-line errors."""

import numpy as np
from PIL import Image

from flax_squeezenet.cli import export as export_cli


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
