"""What a user sees of a run: a progress bar, metric files (TensorBoard, JSONL, CSV) and a plot.

Everything is written by process 0 only, under the workdir: `metrics.jsonl` and `metrics.csv`
(one row per logged step and split), `tensorboard/` (event files) and `curves.png`. A remote workdir
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
from collections.abc import Iterable, Mapping
from typing import Any, Optional

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
