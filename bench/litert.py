"""LiteRT float32 and int8 against onnxruntime float32 and int8 for squeezenet1_1, side by side in one run.

Real photos (`../shared/data/imagenet-photos`), shuffled as bench/int8.py does: the first
--calibration photos calibrate both int8 files, the others are held back. For each of the four
files it reports its size, the top-1 agreement with the Flax float32 model and the largest logit
difference on the held-back photos, and the top-1 accuracy on those of them with an ImageNet-1k
label. Then the images/s of the four at batch 1 and 224 pixels (LiteRT in the ai_edge_litert
interpreter with its default XNNPACK delegate and --threads threads, onnxruntime's CPU provider
with default options), alternating the four each repeat, as medians, and their ratios.

    python bench/litert.py --out bench_results/litert.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flax_squeezenet as fsq  # noqa: E402
from flax_squeezenet.deploy import onnx_int8, tflite  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from int8 import photo_split, write_json  # noqa: E402


def write_files(model, variables, calibration: np.ndarray, folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """The four files, by runtime and precision; batch 1 at 224 for LiteRT, free batch for ONNX."""
    return {
        "onnxruntime float32": fsq.save_onnx(model, variables, folder / "f32.onnx"),
        "onnxruntime int8": fsq.save_onnx(model, variables, folder / "int8.onnx", int8=True, calibration=calibration),
        "LiteRT float32": fsq.save_tflite(model, variables, folder / "f32.tflite", batch=1),
        "LiteRT int8": fsq.save_tflite(model, variables, folder / "int8.tflite", int8=True,
                                       calibration=calibration, batch=1),  # fmt: skip
    }


def accuracy_rows(paths: dict, reference: np.ndarray, held_back: np.ndarray, labels: np.ndarray) -> list[dict]:
    labeled = labels >= 0
    rows = [{"model": "Flax float32", "top1": float(np.mean(reference.argmax(1)[labeled] == labels[labeled]))}]
    for name, path in paths.items():
        logits = tflite.run_tflite(path, held_back) if path.suffix == ".tflite" else onnx_int8.run_onnx(path, held_back)
        result = onnx_int8.agreement(reference, logits)
        rows.append({
            "model": name, "bytes": path.stat().st_size,
            "top1": float(np.mean(logits.argmax(1)[labeled] == labels[labeled])),
            "agreement": result.top1_agreement, "max_logit_difference": result.max_logit_difference,
        })  # fmt: skip
    return rows


def runner(path: pathlib.Path, image: np.ndarray, threads: int):
    """A function running the model at `path` once on the NHWC `image` (batch 1)."""
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"images": np.ascontiguousarray(image.transpose(0, 3, 1, 2))}
        return lambda: session.run(None, feed)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    interpreter.set_tensor(source["index"], tflite.as_model_input(image, source))
    return interpreter.invoke


def speed_rows(paths: dict, image: np.ndarray, repeats: int, threads: int) -> list[dict]:
    runs = {name: runner(path, image, threads) for name, path in paths.items()}
    rates = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            run()
            times = []
            for _ in range(15):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            rates[name].append(1 / statistics.median(times))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return [
        {"batch": 1, **{f"{name} img/s": rate for name, rate in medians.items()},
         "LiteRT/onnxruntime float32": medians["LiteRT float32"] / medians["onnxruntime float32"],
         "LiteRT/onnxruntime int8": medians["LiteRT int8"] / medians["onnxruntime int8"],
         "LiteRT int8/float32": medians["LiteRT int8"] / medians["LiteRT float32"],
         "onnxruntime int8/float32": medians["onnxruntime int8"] / medians["onnxruntime float32"],
         "LiteRT threads": threads}
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder")
    parser.add_argument("--calibration", type=int, default=250, help="photos to calibrate on")
    parser.add_argument("--repeats", type=int, default=5, help="alternating speed measurements")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="LiteRT interpreter threads")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    model, variables, calibration, held_back, labels = photo_split(pathlib.Path(args.shared), args.calibration)
    with tempfile.TemporaryDirectory() as scratch:
        paths = write_files(model, variables, calibration, pathlib.Path(scratch))
        reference = onnx_int8.flax_logits(model, variables, held_back)
        results = {
            "accuracy": accuracy_rows(paths, reference, held_back, labels),
            "speed": speed_rows(paths, held_back[:1], args.repeats, args.threads),
        }
    for section in results.values():
        for row in section:
            print(json.dumps(row))
    write_json(results, args.out)


if __name__ == "__main__":
    main()
