"""How many calibration photos an int8 export needs: agreement with the float model vs calibration size.

squeezenet1_1 (torchvision's weights) and the shared ImageNet photos (`../shared/data/imagenet-photos`)
in a fixed shuffle: the first --held-out photos are the fixed test set; each draw takes its
calibration photos from a disjoint slice of the rest, so draws show how much the result depends on
which photos were picked. For each calibration size and draw, the int8 ONNX file (the default,
nearest weight rounding) and the int8 LiteRT file are calibrated and compared with the Flax model
on the test set: top-1 agreement and the largest logit difference. This is the measurement behind
`onnx_int8.MIN_CALIBRATION_IMAGES`.

    python bench/calibration_size.py --out bench_results/calibration_size.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flax_squeezenet as fsq  # noqa: E402
from flax_squeezenet.deploy import onnx_int8, tflite  # noqa: E402


def measure(model, variables, calibration: np.ndarray, test: np.ndarray, reference: np.ndarray, folder) -> dict:
    """Top-1 agreement and max |logit difference| of the int8 ONNX and LiteRT files calibrated on `calibration`."""
    onnx_path = fsq.save_onnx(model, variables, folder / "int8.onnx", int8=True, calibration=calibration)
    onnx = onnx_int8.agreement(reference, onnx_int8.run_onnx(onnx_path, test))
    row = {"onnx_top1_agreement": onnx.top1_agreement, "onnx_max_logit_difference": onnx.max_logit_difference}
    try:
        tflite.require_litert()
    except ImportError:
        return row
    tflite_path = tflite.save_tflite(model, variables, folder / "int8.tflite", int8=True, calibration=calibration,
                                     image_size=calibration.shape[1])  # fmt: skip
    litert = onnx_int8.agreement(reference, tflite.run_tflite(tflite_path, test))
    row.update(litert_top1_agreement=litert.top1_agreement, litert_max_logit_difference=litert.max_logit_difference)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder")
    parser.add_argument("--held-out", type=int, default=100, help="photos in the fixed test set")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="calibration sizes")
    parser.add_argument("--draws", type=int, default=2, help="disjoint calibration draws per size")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    shared = pathlib.Path(args.shared)
    photos = onnx_int8.image_files(shared / "data/imagenet-photos")
    photos = [photos[i] for i in np.random.default_rng(0).permutation(len(photos))]
    model, variables = fsq.load_pretrained(shared / "pretrained/torchvision_squeezenet1_1.ncnn.param")
    test = fsq.preprocess(photos[: args.held_out])
    reference = onnx_int8.flax_logits(model, variables, test)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            for draw in range(args.draws):
                start = args.held_out + draw * max(args.sizes)
                calibration = fsq.preprocess(photos[start : start + size])
                row = {"calibration": size, "draw": draw, **measure(model, variables, calibration, test, reference,
                                                                    pathlib.Path(scratch))}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
