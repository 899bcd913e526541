"""What a user sees of a run: a progress bar, metric files (TensorBoard, JSONL, CSV) and a plot.

Everything is written by process 0 only, under the workdir: `metrics.jsonl` and `metrics.csv`
(one row per logged step and split), `tensorboard/` (event files) and `curves.png`.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Optional

import tqdm

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Appends scalar metrics to `metrics.jsonl`, `metrics.csv` and TensorBoard events in `workdir`.

    Rows are `{"step": int, "split": "train"|"eval"|..., name: value, ...}`. Appending keeps the rows
    of a resumed run; a step logged again after a resume (replayed past the last checkpoint) has
    its newer values win in `read_metrics`.
    """

    def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
        self.workdir = pathlib.Path(workdir)
        self.enabled = enabled
        self._tensorboard = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tensorboard = SummaryWriter(str(self.workdir / TENSORBOARD_DIR))

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        with open(self.workdir / METRICS_JSONL, "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.workdir / METRICS_CSV
        new_file = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["step", "split", "name", "value"])
            writer.writerows([step, split, k, v] for k, v in row.items() if k not in ("step", "split"))
        for name, value in metrics.items():
            self._tensorboard.add_scalar(f"{split}/{name}", float(value), int(step))
        self._tensorboard.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(workdir: str | pathlib.Path) -> dict[str, dict[int, dict[str, float]]]:
    """The rows of `metrics.jsonl` as {split: {step: metrics}} (later rows of a step win)."""
    path = pathlib.Path(workdir) / METRICS_JSONL
    result: dict[str, dict[int, dict[str, float]]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                step, split = row.pop("step"), row.pop("split")
                result.setdefault(split, {})[step] = row
    return result


def plot_curves(workdir: str | pathlib.Path, output: Optional[str | pathlib.Path] = None) -> pathlib.Path:
    """Plot train and eval loss and top-1 by step from `metrics.jsonl` into a PNG; returns its path."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's plotting backend alone

    workdir = pathlib.Path(workdir)
    output = pathlib.Path(output) if output else workdir / CURVES_PNG
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
    tmp = output.with_name(output.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(output)
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
