"""int8 ONNX against float32 ONNX for squeezenet1_1 (torchvision weights), side by side in one run.

Real photos (`../shared/data/imagenet-photos`): a fixed shuffle, the first --calibration photos
calibrate, the others are held back. For each variant (weight rounding, nodes kept in float) it
reports the top-1 agreement with the float32 ONNX model and the largest logit difference on the
held-back photos, the top-1 accuracy on those of them with an ImageNet-1k label, and the file size.
Then the images/s of float32 and the chosen int8 file (`flax_squeezenet.save_onnx(int8=True)`: AdaRound
weights, `onnx_int8.FLOAT_NODES` in float) in onnxruntime (CPU provider, default options) at batch
32 and batch 1, alternating the two models each repeat, as medians.

    python bench/int8.py --out bench_results/int8.json
    python bench/int8.py --workdir runs/fashion_mnist   # a training run's test top-1, float32 vs int8 ONNX
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flax_squeezenet as fsq  # noqa: E402
from flax_squeezenet.deploy import int8_rounding, onnx_int8, tflite  # noqa: E402

VARIANTS = {  # name: (weight rounding, nodes kept in float)
    "AdaRound weights, average pool in float (--weight-rounding adaround)": ("adaround", onnx_int8.FLOAT_NODES),
    "nearest weights, average pool in float (the default)": ("nearest", onnx_int8.FLOAT_NODES),
}


def labels_of(files: list[pathlib.Path], wnids_file: pathlib.Path) -> np.ndarray:
    """ImageNet-1k class index of each photo by the WordNet ID its name starts with; -1 for none."""
    index = {wnid: i for i, wnid in enumerate(wnids_file.read_text().split())}
    return np.array([index.get(path.name.split("_")[0], -1) for path in files])


def images_per_second(session, images: np.ndarray, repeats: int) -> float:
    feed = {"images": np.ascontiguousarray(images)}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def accuracy_rows(model, variables, calibration, held_back, labels, roundings) -> tuple[list[dict], object]:
    """The rows of the float32 model and each variant whose weight rounding is in `roundings`; the
    last variant's int8 model."""
    proto = fsq.to_onnx(model, variables)
    reference = onnx_int8.run_onnx(proto, held_back)
    labeled = labels >= 0
    rows = [{"model": "float32", "bytes": proto.ByteSize(),
             "top1": float(np.mean(reference.argmax(1)[labeled] == labels[labeled]))}]  # fmt: skip
    for name, (weight_rounding, float_nodes) in VARIANTS.items():
        if weight_rounding not in roundings:
            continue
        start = time.perf_counter()
        if weight_rounding == "adaround":
            rounded = fsq.to_onnx(model, int8_rounding.adaround_int8(model, variables, calibration, progress=True))
            int8 = onnx_int8.quantize_int8(rounded, calibration, float_nodes, ranges_from=proto)
        else:
            int8 = onnx_int8.quantize_int8(proto, calibration, float_nodes)
        seconds = time.perf_counter() - start
        logits = onnx_int8.run_onnx(int8, held_back)
        result = onnx_int8.agreement(reference, logits)
        rows.append({
            "model": f"int8, {name}", "bytes": int8.ByteSize(), "quantize seconds": seconds,
            "top1": float(np.mean(logits.argmax(1)[labeled] == labels[labeled])),
            "agreement": result.top1_agreement, "max_logit_difference": result.max_logit_difference,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows, int8


def speed_rows(model, variables, int8_proto, calibration, repeats: int) -> list[dict]:
    import onnxruntime

    with tempfile.TemporaryDirectory() as scratch:
        float_path = fsq.save_onnx(model, variables, pathlib.Path(scratch) / "f32.onnx")
        int8_path = pathlib.Path(scratch) / "int8.onnx"
        int8_path.write_bytes(int8_proto.SerializeToString())
        sessions = {
            name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for name, path in (("float32", float_path), ("int8", int8_path))
        }
        rows = []
        for batch in (32, 1):
            images = np.resize(calibration.transpose(0, 3, 1, 2), (batch, 3, 224, 224))
            rates = {name: [] for name in sessions}
            for _ in range(repeats):
                for name, session in sessions.items():
                    rates[name].append(images_per_second(session, images, 3 if batch > 1 else 15))
            medians = {name: statistics.median(values) for name, values in rates.items()}
            rows.append({"batch": batch, **{f"{k} img/s": v for k, v in medians.items()},
                         "ratio": medians["int8"] / medians["float32"]})  # fmt: skip
    return rows


def split_arrays(config, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC, labels) of `split` as the training program's evaluation prepares them."""
    from train import input_pipeline

    config = config.copy_and_resolve_references()
    config.eval_split = split
    images, labels = [], []
    for batch in input_pipeline.create_eval_batches(config):
        mask = np.asarray(batch["mask"])
        images.append(np.asarray(batch["image"])[mask])
        labels.append(np.asarray(batch["label"])[mask])
        if limit is not None and sum(map(len, images)) >= limit:
            break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def tflite_logits(path: pathlib.Path, images: np.ndarray, chunk: int = 500) -> np.ndarray:
    """The LiteRT file's logits on `images`, in chunks that bound the interpreter's memory."""
    return np.concatenate([tflite.run_tflite(path, images[i : i + chunk]) for i in range(0, len(images), chunk)])


def exported_logits(model, variables, calibration, images, folder: pathlib.Path, size: int) -> dict[str, np.ndarray]:
    """Logits on `images` of the model written to `folder` as float32 and int8 ONNX and LiteRT."""
    return {
        "ONNX float32": onnx_int8.run_onnx(fsq.save_onnx(model, variables, folder / "f32.onnx"), images),
        "ONNX int8": onnx_int8.run_onnx(
            fsq.save_onnx(model, variables, folder / "int8.onnx", int8=True, calibration=calibration), images
        ),
        "LiteRT float32": tflite_logits(fsq.save_tflite(model, variables, folder / "f32.tflite", image_size=size), images),
        "LiteRT int8": tflite_logits(
            fsq.save_tflite(model, variables, folder / "int8.tflite", int8=True, calibration=calibration, image_size=size),
            images,
        ),
    }


def trained_model_rows(workdir: pathlib.Path, calibration_count: int) -> list[dict]:
    """Test top-1 of a training run's saved model: float32 and int8 ONNX, float32 and int8 LiteRT
    (int8 calibrated on train images)."""
    from train import workdir as workdirs

    config = workdirs.read_config(workdir)
    model, variables = fsq.load_pretrained(workdirs.Paths.of(workdir, config).model)
    calibration, _ = split_arrays(config, "train", calibration_count)
    test_images, test_labels = split_arrays(config, "test")
    with tempfile.TemporaryDirectory() as scratch:
        logits = exported_logits(model, variables, calibration, test_images, pathlib.Path(scratch), test_images.shape[1])
    reference = logits["ONNX float32"]
    rows = []
    for name, values in logits.items():
        agreement = onnx_int8.agreement(reference, values)
        rows.append({
            "workdir": str(workdir), "format": name, "test images": len(test_labels),
            "calibration train images": len(calibration), "top1": float(np.mean(values.argmax(1) == test_labels)),
            "agreement with ONNX float32": agreement.top1_agreement, "max_logit_difference": agreement.max_logit_difference,
        })  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def photo_split(shared: pathlib.Path, count: int) -> tuple:
    """squeezenet1_1 with torchvision's weights, and the shared ImageNet photos in a fixed shuffle:
    (model, variables, the first `count` prepared to calibrate, the rest prepared, their labels)."""
    photos = onnx_int8.image_files(shared / "data/imagenet-photos")
    photos = [photos[i] for i in np.random.default_rng(0).permutation(len(photos))]
    model, variables = fsq.load_pretrained(shared / "pretrained/torchvision_squeezenet1_1.ncnn.param")
    calibration = fsq.preprocess(photos[:count])
    held_back_files = photos[count:]
    held_back = fsq.preprocess(held_back_files)
    labels = labels_of(held_back_files, shared / "data/imagenet_wnids.txt")
    print(f"calibration {len(calibration)} photos; held back {len(held_back)}, {int((labels >= 0).sum())} labeled")
    return model, variables, calibration, held_back, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder")
    parser.add_argument("--calibration", type=int, default=250, help="photos to calibrate on")
    parser.add_argument("--repeats", type=int, default=5, help="alternating speed measurements")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--rounding", nargs="+", choices=("adaround", "nearest"), default=["adaround", "nearest"],
                        help="the weight roundings to measure (the speed rows time the last)")  # fmt: skip
    parser.add_argument("--workdir", type=pathlib.Path, help="instead: a training run's test top-1, float32 vs int8")
    args = parser.parse_args()
    if args.workdir is not None:
        results = {"trained": trained_model_rows(args.workdir, args.calibration)}
        print(json.dumps(results["trained"][0]))
        write_json(results, args.out)
        return
    model, variables, calibration, held_back, labels = photo_split(pathlib.Path(args.shared), args.calibration)
    accuracy, int8_proto = accuracy_rows(model, variables, calibration, held_back, labels, args.rounding)
    results = {"accuracy": accuracy, "speed": speed_rows(model, variables, int8_proto, calibration, args.repeats)}
    for row in results["speed"]:
        print(json.dumps(row))
    write_json(results, args.out)


def write_json(results: dict, path: str | None) -> None:
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
