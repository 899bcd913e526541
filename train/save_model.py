"""`python -m train.save_model --workdir DIR [--step best|latest|N] [--output DIR/model]`

Saves a run's checkpoint as a `flax_squeezenet.save_pretrained` directory, which
`flax_squeezenet.load_pretrained(path)` reads (and `squeezenet-export` turns into ONNX). Training
saves its final state by itself in single-process runs; this command saves any checkpointed step,
and the model of multi-process runs (run it in one process once training is done).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
from typing import Optional

import jax
import numpy as np

import flax_squeezenet
from flax_squeezenet.storage import files
from flax_squeezenet.weights.conventions import InputConvention
from train import averaging
from train import run as run_lib
from train import workdir as workdir_lib
from train.state import TrainState


def save_model(run: run_lib.Run, state: TrainState, directory: str | os.PathLike) -> pathlib.Path:
    """Write `state`'s model (`averaging.model_params`) where `flax_squeezenet.load_pretrained(directory)`
    reads it, with the run's evaluation transform and class names (tests/test_conventions.py), and
    for image folders its training photos (the default calibration photos of `squeezenet-export --int8`)."""
    params = jax.tree.map(np.asarray, averaging.model_params(state))
    p = run.data.settings.preprocessing
    convention = InputConvention(p.mean, p.std, round(p.image_size / p.eval_crop_fraction), p.image_size,
                                 "L" if p.channels == 1 else "RGB")  # fmt: skip
    return flax_squeezenet.save_pretrained(
        directory, {"params": params}, model=run.config.model, preprocessing=convention,
        class_names=list(run.data.info.class_names), training_images=run.data.dataset.train_files or None,
        **run.model_kwargs,
    )  # fmt: skip


def save_checkpoint_as_model(workdir: str, step: str = "best", output: Optional[str] = None) -> pathlib.Path:
    """Save checkpoint `step` ("best", "latest" or a number) of the run in `workdir`; returns the directory.

    Refused (`workdir.WorkdirInUseError`) while a run holds the workdir, and
    (`files.OutputIsInputError`) for an output that would replace the run's checkpoints or config."""
    config = workdir_lib.read_config(workdir)
    if output:
        config.model_dir = output
    run = run_lib.build_run(config, workdir)
    workdir_lib.check_model_dir(run.paths.model)
    files.check_output_is_not_input(run.paths.model, run.paths.checkpoints, run.paths.config_json)
    with workdir_lib.locked(run.paths.root):
        state, _ = run_lib.restore_state(run, step)
        return save_model(run, state, run.paths.model)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.save_model", description=__doc__.split("\n\n")[1])
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--step", default="best", help="'best' (default: best eval top-1), 'latest' or a saved step")
    parser.add_argument("--output", default=None, help="directory to save to (default: the run's model_dir or DIR/model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        path = save_checkpoint_as_model(args.workdir, args.step, args.output)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
