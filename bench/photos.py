"""CIFAR-10 JPEG as "your photos": the `finetune` preset against a linear classifier on frozen ImageNet features.

For each size K, the first K photos (by name) of each class of ../shared/data/cifar10-jpeg/train are
linked into a photos folder and trained on as a user would (`python -m train --config finetune
--config.photos=...`, ImageNet weights from ../shared; the run splits off its own held-out photos),
timed from the split to the saved model; with --export-at K the int8 LiteRT export calibrated on
the run's training photos is timed too. Both models are then tested on all 10,000 test photos:

- the recipe: the saved model (the checkpoint of best held-out top-1);
- the baseline: multinomial logistic regression (optax L-BFGS, L2 chosen on the run's held-out
  photos) on the pooled features of the ImageNet weights at the same input size and evaluation
  transform, trained on the same training photos (the run's split.json).

    python bench/photos.py --per-class 20 100 500 --export-at 100 --out bench_results/photos.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from PIL import Image  # noqa: E402

import flax_squeezenet as fsq  # noqa: E402
from train.data import transforms  # noqa: E402

SHARED = ROOT.parent / "shared"
CIFAR = SHARED / "data" / "cifar10-jpeg"
IMAGENET_WEIGHTS = SHARED / "pretrained" / "torchvision_squeezenet1_1.ncnn.param"
IMAGE_SIZE, CROP_FRACTION = 128, 0.875  # the finetune preset's input and evaluation crop
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def link_subset(per_class: int, folder: pathlib.Path) -> pathlib.Path:
    """`folder`/<class>/ holding links to the first `per_class` train photos of each class."""
    for class_dir in sorted(p for p in (CIFAR / "train").iterdir() if p.is_dir()):
        (folder / class_dir.name).mkdir(parents=True, exist_ok=True)
        for photo in sorted(class_dir.iterdir())[:per_class]:
            link = folder / class_dir.name / photo.name
            if not link.exists():
                link.symlink_to(photo)
    return folder


def prepared(paths: list[pathlib.Path]) -> np.ndarray:
    """float32 [N, 128, 128, 3]: the photos as the saved model's evaluation prepares them."""
    def one(path):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        return transforms.normalize(transforms.center_crop(pixels, IMAGE_SIZE, CROP_FRACTION), MEAN, STD)

    return np.stack([one(p) for p in paths])


def batched(fn, images: np.ndarray, batch: int = 250) -> np.ndarray:
    return np.concatenate([np.asarray(fn(images[i:i + batch])) for i in range(0, len(images), batch)])


def test_set() -> tuple[list[pathlib.Path], np.ndarray, tuple[str, ...]]:
    classes = tuple(sorted(p.name for p in (CIFAR / "test").iterdir() if p.is_dir()))
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted((CIFAR / "test" / name).iterdir())
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels), classes


def fit_logistic(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float, steps: int = 200):
    """(W, b) of softmax regression minimising mean cross-entropy + l2 * |W|^2 (optax L-BFGS)."""
    x, y = jnp.asarray(features), jnp.asarray(labels)

    def loss(params):
        logits = x @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + l2 * jnp.sum(params["w"] ** 2)

    params = {"w": jnp.zeros((features.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    solver = optax.lbfgs()
    state = solver.init(params)
    value_and_grad = optax.value_and_grad_from_state(loss)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params


def linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], num_classes: int) -> dict:
    """Test top-1 of the logistic regression whose L2 weight is best on the held-out photos."""
    mean, std = features["train"].mean(0), features["train"].std(0) + 1e-6
    scaled = {k: (v - mean) / std for k, v in features.items()}
    tried = {}
    for l2 in L2_GRID:
        params = fit_logistic(scaled["train"], labels["train"], num_classes, l2)
        predict = lambda x: np.asarray(jnp.asarray(x) @ params["w"] + params["b"]).argmax(-1)  # noqa: E731
        tried[l2] = (float(np.mean(predict(scaled["held_out"]) == labels["held_out"])),
                     float(np.mean(predict(scaled["test"]) == labels["test"])))
    best = max(tried, key=lambda l2: tried[l2][0])
    return {"l2": best, "held_out_top1": tried[best][0], "test_top1": tried[best][1]}


def run_size(per_class: int, work: pathlib.Path, test: tuple, test_features: np.ndarray, export: bool) -> dict:
    photos = link_subset(per_class, work / f"photos_{per_class}")
    workdir = work / f"run_{per_class}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "train", "--workdir", str(workdir), "--config", "finetune",
               f"--config.photos={photos}", f"--config.init_from={IMAGENET_WEIGHTS}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    train_seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"training failed:\n{done.stderr[-3000:]}")
    row = {"per_class": per_class, "command": " ".join(command), "train_seconds": round(train_seconds, 1),
           "last_lines": done.stdout.strip().splitlines()[-3:]}  # fmt: skip
    if export:
        output = workdir / "model_int8.tflite"
        export_command = [sys.executable, "-m", "flax_squeezenet.cli.export", "--weights", str(workdir / "model"),
                          "--format", "tflite", "--int8", "--output", str(output)]  # fmt: skip
        start = time.perf_counter()
        exported = subprocess.run(export_command, env=env, cwd=ROOT, capture_output=True, text=True)
        row["export_seconds"] = round(time.perf_counter() - start, 1)
        row["export_line"] = (exported.stdout or exported.stderr).strip()
        row["split_to_exported_seconds"] = round(train_seconds + row["export_seconds"], 1)
    test_paths, test_labels, classes = test
    test_images = prepared(test_paths)
    module, variables = fsq.load_pretrained(str(workdir / "model"))
    logits = batched(jax.jit(lambda x: module.apply(variables, x)), test_images)
    row["recipe_test_top1"] = float(np.mean(logits.argmax(-1) == test_labels))
    split = json.loads((workdir / "split.json").read_text())
    features, labels = {"test": test_features}, {"test": test_labels}
    backbone, imagenet = fsq.load_pretrained(str(IMAGENET_WEIGHTS))
    pooled = jax.jit(lambda x: backbone.apply(imagenet, x, output="pooled"))
    for side in ("train", "held_out"):
        paths = [(photos / p).resolve() for name in classes for p in split["classes"][name][side]]
        labels[side] = np.asarray([i for i, name in enumerate(classes) for _ in split["classes"][name][side]])
        features[side] = batched(pooled, prepared(paths))
    row["train_photos"], row["held_out_photos"] = len(labels["train"]), len(labels["held_out"])
    row["linear_probe"] = linear_probe(features, labels, len(classes))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 100, 500])
    parser.add_argument("--export-at", type=int, default=100, help="the size whose int8 LiteRT export is timed")
    parser.add_argument("--work", default="/tmp/photos_bench", help="where the photo folders and runs go")
    parser.add_argument("--out", default="bench_results/photos.json")
    args = parser.parse_args()
    work = pathlib.Path(args.work)
    test = test_set()
    backbone, imagenet = fsq.load_pretrained(str(IMAGENET_WEIGHTS))
    test_features = batched(jax.jit(lambda x: backbone.apply(imagenet, x, output="pooled")), prepared(test[0]))
    results = {"uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), "rows": []}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for per_class in args.per_class:
        row = run_size(per_class, work, test, test_features, per_class == args.export_at)
        row["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        results["rows"].append(row)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{per_class}/class: recipe {100 * row['recipe_test_top1']:.2f}%, linear probe "
              f"{100 * row['linear_probe']['test_top1']:.2f}% on 10,000 test photos; train {row['train_seconds']} s"
              + (f", split to int8 tflite {row['split_to_exported_seconds']} s" if "export_seconds" in row else ""),
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
