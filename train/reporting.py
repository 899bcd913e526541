"""What a user sees of a run: a progress bar, metric files (TensorBoard, JSONL, CSV) and a plot.

Everything is written by process 0 only, under the workdir: `metrics.jsonl` and `metrics.csv`
(one row per logged step and split), `tensorboard/` (event files), `curves.png`, and with config key
`report` the eval split's report in `report/` (`write_report`). A remote workdir
(`gs://...`) gets the same files: object stores cannot append, so there a metrics file is rewritten
whole on each write (TensorBoard's own writer uploads its event file the same way).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import tqdm

from flax_squeezenet.storage import files

logger = logging.getLogger(__name__)

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Appends scalar metrics to `metrics.jsonl`, `metrics.csv` and TensorBoard events in `workdir`.

    Rows are `{"step": int, "split": "train"|"eval"|..., name: value, ...}`. Appending keeps the rows
    of a resumed run. Given `resume_step` (the step the run continues from: its restored checkpoint's,
    or 0), opening first rewrites both files to hold each (step, split) once and nothing after
    `resume_step` (rows a stopped run logged past its last checkpoint are logged again), and tells
    TensorBoard to drop its events after `resume_step`.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True, resume_step: Optional[int] = None):
        self.workdir = files.user_path(workdir)
        self.enabled = enabled
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                truncate_metrics(self.workdir, resume_step)
            purge_step = None if resume_step is None else resume_step + 1
            self._tensorboard = SummaryWriter(str(self.workdir / TENSORBOARD_DIR), purge_step=purge_step)

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        append_text(self.workdir / METRICS_JSONL, json.dumps(row) + "\n")
        csv_path = self.workdir / METRICS_CSV
        append_text(csv_path, csv_text([row], header=not csv_path.exists()))
        for name, value in metrics.items():
            self._tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def append_text(path: files.AnyPath, text: str) -> None:
    """Add `text` at the end of `path` (created if absent); a remote file is replaced whole, as stores cannot append."""
    if files.is_remote(path):
        write_atomically(path, (path.read_text() if path.exists() else "") + text)
        return
    with open(path, "a", newline="") as f:
        f.write(text)


def csv_text(rows: Iterable[Mapping[str, Any]], header: bool) -> str:
    """`metrics.csv` lines (step, split, name, value; after a header line if `header`) for `metrics.jsonl` rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(["step", "split", "name", "value"])
    for row in rows:
        writer.writerows([row["step"], row["split"], k, v] for k, v in row.items() if k not in ("step", "split"))
    return buffer.getvalue()


def read_rows(path: files.AnyPath) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` file, in order; a last line cut off by a killed run is left out.

    Raises a ValueError naming the file and line when a line before the last is not a metrics row.
    """
    lines = path.read_text().splitlines() if path.exists() else []
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int) or "split" not in row:
                raise ValueError("expected an object with an integer step and a split")
        except ValueError as error:
            if number == len(lines):
                logger.warning("%s: leaving out its last line, cut off by a stopped run: %r", path, line)
                break
            raise ValueError(f"{path} line {number} is not a metrics row ({error}): {line[:200]!r}") from error
        rows.append(row)
    return rows


def truncate_metrics(workdir: str | os.PathLike, resume_step: int) -> None:
    """Make `metrics.jsonl` and `metrics.csv` hold each (step, split) once and no step after `resume_step`.

    Of a (step, split) logged twice the last row is kept. The CSV is rebuilt from the JSONL rows; each
    file is replaced atomically, and only when its content changes.
    """
    workdir = files.user_path(workdir)
    rows = read_rows(workdir / METRICS_JSONL)
    kept: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        if row["step"] <= resume_step:
            kept.pop((row["step"], row["split"]), None)
            kept[(row["step"], row["split"])] = row
    if len(kept) < len(rows):
        dropped = len(rows) - len(kept)
        logger.info("metrics: dropping %d rows logged after step %d or logged twice", dropped, resume_step)
    for name, text in (
        (METRICS_JSONL, "".join(json.dumps(row) + "\n" for row in kept.values())),
        (METRICS_CSV, csv_text(kept.values(), header=True)),
    ):
        path = workdir / name
        if (kept or path.exists()) and (not path.exists() or path.read_bytes() != text.encode()):
            write_atomically(path, text)


def write_atomically(path: files.AnyPath, text: str) -> None:
    """Replace `path` by a file holding `text` (the old file stays whole if this fails; the user's umask applies)."""
    with files.atomic_file(path) as temporary, open(temporary, "w", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_metrics(workdir: str | os.PathLike) -> dict[str, dict[int, dict[str, float]]]:
    """The rows of `metrics.jsonl` as {split: {step: metrics}} (later rows of a step win)."""
    result: dict[str, dict[int, dict[str, float]]] = {}
    for row in read_rows(files.user_path(workdir) / METRICS_JSONL):
        step, split = row.pop("step"), row.pop("split")
        result.setdefault(split, {})[step] = row
    return result


def plot_curves(workdir: str | os.PathLike, output: Optional[str | os.PathLike] = None) -> files.AnyPath:
    """Plot train and eval loss and top-1 by step from `metrics.jsonl` into a PNG; returns its path."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's plotting backend alone

    workdir = files.user_path(workdir)
    output = files.user_path(output) if output else workdir / CURVES_PNG
    metrics = read_metrics(workdir)
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for ax, name, title in zip(axes, ("loss", "top1", "learning_rate"), ("loss", "top-1 accuracy", "learning rate")):
        for split in ("train", "eval"):
            rows = metrics.get(split, {})
            points = sorted((s, m[name]) for s, m in rows.items() if name in m)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=split, marker="o" if split == "eval" else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    with files.atomic_file(output) as temporary:
        fig.savefig(temporary, dpi=100, format="png")
    return output


class ProgressBar:
    """A tqdm bar over the train steps showing loss, top-1, images/s and the ETA (process 0 only)."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                              disable=not enabled, smoothing=0.1)  # fmt: skip

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        self._bar.update(step - self._bar.n)
        shown = {"loss": f"{metrics['loss']:.4f}", "top1": f"{metrics['top1']:.3f}"}
        if "images_per_sec" in metrics and math.isfinite(metrics["images_per_sec"]):
            shown["img/s"] = f"{metrics['images_per_sec']:.0f}"
        self._bar.set_postfix(shown, refresh=False)

    def write(self, message: str) -> None:
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()


REPORT_DIR = "report"
MAX_MISTAKES_SHOWN = 96  # the contact sheet's photos: a sheet stays readable; the CSVs count all


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [true class, predicted class] counts."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_rows(matrix: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per class: its held-out count, precision and recall (NaN where nothing was predicted / held out)."""
    rows = []
    for index, name in enumerate(class_names):
        correct, count, predicted = matrix[index, index], matrix[index].sum(), matrix[:, index].sum()
        rows.append({"class": name, "count": int(count), "precision": correct / predicted if predicted else math.nan,
                     "recall": correct / count if count else math.nan})  # fmt: skip
    return rows


def per_class_table(rows: Sequence[Mapping[str, Any]], top1: float, total: int) -> str:
    """The per-class rows as an aligned text table, with the overall top-1 at the end."""
    width = max(len("class"), *(len(str(row["class"])) for row in rows))
    lines = [f"{'class':<{width}}  {'count':>6}  {'precision':>9}  {'recall':>6}"]
    lines += [f"{row['class']:<{width}}  {row['count']:>6}  {row['precision']:>9.3f}  {row['recall']:>6.3f}" for row in rows]
    lines.append(f"{'all':<{width}}  {total:>6}  {'top-1':>9}  {top1:>6.3f}")
    return "\n".join(lines)


def _write_csv(path: files.AnyPath, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


def _save_figure(fig, path: files.AnyPath) -> None:
    with files.atomic_file(path) as temporary:
        fig.savefig(temporary, dpi=100, format="png")


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: files.AnyPath) -> None:
    """The confusion matrix as a PNG: counts in the cells, row-normalised colours, class names on both axes."""
    from matplotlib.figure import Figure

    n = len(class_names)
    side = min(24.0, 2.5 + 0.55 * n)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    rates = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("held-out photos: count per (true, predicted) class")
    if n <= 30:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                ax.text(column, row, str(count), ha="center", va="center",
                        color="white" if rates[row, column] > 0.5 else "black", fontsize=8)  # fmt: skip
    fig.tight_layout()
    _save_figure(fig, path)


def plot_mistakes(images: Sequence[np.ndarray], titles: Sequence[str], path: files.AnyPath, total: int) -> None:
    """A contact sheet of `images` (uint8 [H, W, C]) each above its title; `total` mistakes in all."""
    from matplotlib.figure import Figure

    columns = max(1, min(8, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    fig = Figure(figsize=(2.2 * columns, 2.6 * rows + 0.6))
    shown = f"the first {len(images)} of " if len(images) < total else ""
    fig.suptitle(f"held-out photos the model gets wrong: {shown}{total}" if total else "no held-out photo is wrong")
    for index, ax in enumerate(np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()):
        ax.axis("off")
        if index < len(images):
            image = images[index]
            ax.imshow(image[:, :, 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
            ax.set_title(titles[index], fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def write_report(directory: files.AnyPath, labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str],
                 image_of: Callable[[int], np.ndarray], names: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Write the report of a classifier's eval-split results into `directory` (created); returns
    {"top1", "count", "table", and the paths "per_class_csv", "confusion_csv", "confusion_png", "mistakes_png"}.

    `labels` and `predicted` are per example; `image_of(i)` is example i's image and `names[i]`
    (optional) its file name, shown on the contact sheet of mistakes.
    """
    directory = files.user_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    matrix = confusion_matrix(labels, predicted, len(class_names))
    rows = per_class_rows(matrix, class_names)
    top1 = float(np.trace(matrix) / max(1, matrix.sum()))
    paths = {key: directory / name for key, name in (("per_class_csv", "per_class.csv"), ("confusion_csv", "confusion.csv"),
             ("confusion_png", "confusion.png"), ("mistakes_png", "mistakes.png"))}  # fmt: skip
    _write_csv(paths["per_class_csv"], ["class", "count", "precision", "recall"],
               ([r["class"], r["count"], f"{r['precision']:.4f}", f"{r['recall']:.4f}"] for r in rows))  # fmt: skip
    _write_csv(paths["confusion_csv"], ["true \\ predicted", *class_names],
               ([name, *map(int, matrix[i])] for i, name in enumerate(class_names)))  # fmt: skip
    plot_confusion(matrix, class_names, paths["confusion_png"])
    wrong = np.flatnonzero(labels != predicted)
    shown = wrong[:MAX_MISTAKES_SHOWN]
    titles = [(f"{os.path.basename(names[i])}\n" if names else "") +
              f"true: {class_names[labels[i]]}\npredicted: {class_names[predicted[i]]}" for i in shown]  # fmt: skip
    plot_mistakes([image_of(int(i)) for i in shown], titles, paths["mistakes_png"], len(wrong))
    table = per_class_table(rows, top1, int(matrix.sum()))
    return {"top1": top1, "count": int(matrix.sum()), "table": table, **{k: str(v) for k, v in paths.items()}}
