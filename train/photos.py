"""Your photos to a model, from Python: the `finetune` preset's path as two calls (the checkout's `train`
package; put the checkout on `sys.path`).

    from train import photos
    result = photos.fine_tune("PHOTOS", workdir="runs/mine")   # split, train, save the best, report
    print(result.top1, result.report["mistakes_png"])
    photos.export(result.model, "runs/mine/model_int8.tflite", int8=True)  # calibrated on the training photos

The same as `python -m train --workdir runs/mine --config finetune --config.photos=PHOTOS` followed
by `squeezenet-export --weights runs/mine/model --format tflite --int8 --output ...`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import zipfile
from typing import Any

from flax_squeezenet.cli import export as export_cli
from train import configs, run, trainer
from train.data.photo_split import SPLIT_JSON


@dataclasses.dataclass(frozen=True)
class FineTuned:
    """What `fine_tune` made: the saved model's directory, its held-out top-1 and count, the report's
    files (`train.reporting.write_report`: per_class_csv, confusion_csv, confusion_png, mistakes_png,
    directory, table) and the workdir's split.json."""

    model: str
    top1: float
    held_out: int
    report: dict[str, Any]
    split: str


def fine_tune(photos: str | os.PathLike, workdir: str | os.PathLike, **overrides: Any) -> FineTuned:
    """Train the `finetune` preset on `photos` (one subfolder per class) in `workdir` (resumed if it
    holds a run), with config keys `overrides` (e.g. holdout_fraction=0.1, image_size=160).

    Raises ValueError / OSError with a one-line message for bad photos or settings, as `python -m train`."""
    config = configs.get_preset("finetune")
    config.photos = os.fspath(photos)
    config.update(overrides)
    result = trainer.train_and_evaluate(run.build_run(config, workdir))
    report = result["report"]
    return FineTuned(model=result["model"], top1=report["top1"], held_out=report["count"], report=report,
                     split=os.path.join(os.fspath(workdir), SPLIT_JSON))  # fmt: skip


def unzip(archive: str | os.PathLike) -> str:
    """Extract a .zip of class folders next to it; the photos folder: the extracted one, or the
    single folder it holds when that holds only folders (a zip of `PHOTOS/` itself)."""
    target = pathlib.Path(archive).with_suffix("")
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(target)
    visible = [p for p in target.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(visible) == 1 and visible[0].is_dir() and all(p.is_dir() for p in visible[0].iterdir()
                                                         if not p.name.startswith(".")):  # fmt: skip
        return str(visible[0])
    return str(target)


def export(model: str | os.PathLike, output: str | os.PathLike, *, int8: bool = False, format: str = "tflite",
           calibration: str | os.PathLike | None = None) -> str:  # fmt: skip
    """Run `squeezenet-export` on the saved `model` (int8: calibrated on `calibration`, default the
    model's training photos); returns the line it prints. ValueError with its message if it fails."""
    argv = ["--weights", os.fspath(model), "--format", format, "--output", os.fspath(output)]
    argv += ["--int8"] if int8 else []
    argv += ["--calibration", os.fspath(calibration)] if calibration is not None else []
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = export_cli.main(argv)
    if status:
        raise ValueError(err.getvalue().strip())
    return out.getvalue().strip()
