"""MediaPipe's ImageClassifier on the exported squeezenet1_1 .tflite files, against the Flax model.

torchvision's weights (the ncnn copy in ../shared/pretrained) exported as float32 and as int8 (calibrated
on the shared ImageNet photos that have no ImageNet-1k label), each run in MediaPipe's Tasks
`ImageClassifier` made from the file alone (no option), on the photos with a label. MediaPipe
stretches the whole image to the input size (no crop), so two feeds are measured:
- "crop": the convention's 224x224 center crop of the shorter side resized to 256, given as uint8
  pixels (MediaPipe's resize leaves them as they are), against the Flax model on the same crop;
- "whole": the whole photo (MediaPipe stretches it), against the Flax model on the photo stretched
  to 224x224 as MediaPipe's CPU path does it (OpenCV's warpPerspective, bilinear, no antialiasing;
  cv2 comes with mediapipe), and, for comparison, stretched by PIL (bilinear with antialiasing).
For each: top-1 agreement of MediaPipe float32 with Flax, of MediaPipe int8 with MediaPipe float32,
and the top-1 accuracy of each.

    python bench/mediapipe_check.py --out bench_results/mediapipe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flax_squeezenet as fsq
from flax_squeezenet.deploy import onnx_int8
from flax_squeezenet.weights import conventions, imagenet, pretrained
from flax_squeezenet.weights.preprocess import load_image

sys.path.insert(0, str(ROOT / "bench"))
from int8 import labels_of, write_json


def mediapipe_top1(path: pathlib.Path, images: list) -> tuple[np.ndarray, list[str]]:
    """(class index, class name) of MediaPipe's top category for each uint8 RGB image, the classifier
    made from the file alone."""
    import mediapipe as mp
    from mediapipe.tasks.python import vision

    indices, names = [], []
    with vision.ImageClassifier.create_from_model_path(str(path)) as classifier:
        for image in images:
            top = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            indices.append(top.classifications[0].categories[0].index)
            names.append(top.classifications[0].categories[0].category_name)
    return np.array(indices), names


def mediapipe_stretch(image: np.ndarray, size: int) -> np.ndarray:
    """`image` stretched to size x size as MediaPipe's ImageToTensor CPU converter does: the image's
    corners mapped to the output's by OpenCV's warpPerspective, bilinear, borders replicated."""
    import cv2

    height, width = image.shape[:2]
    source = np.float32([[0, height], [0, 0], [width, 0], [width, height]])
    target = np.float32([[0, size], [0, 0], [size, 0], [size, size]])
    matrix = cv2.getPerspectiveTransform(source, target)
    return cv2.warpPerspective(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def feeds(convention: conventions.InputConvention, files: list[pathlib.Path]) -> dict[str, tuple[list, np.ndarray]]:
    """By feed ("crop", "whole", "whole, PIL resize"): (the uint8 images MediaPipe gets, the Flax
    model's input for them)."""
    plain = dataclasses.replace(convention, mean=(0.0,) * 3, std=(1.0,) * 3)
    crops = np.round(plain.preprocess(files) * 255).astype(np.uint8)
    wholes = [np.asarray(load_image(path)) for path in files]
    size = convention.crop_size
    stretched = np.stack([mediapipe_stretch(image, size) for image in wholes])
    pil = np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for image in wholes])
    mean, std = np.asarray(convention.mean, np.float32), np.asarray(convention.std, np.float32)

    def normalize(pixels: np.ndarray) -> np.ndarray:
        return ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)

    return {"crop": (list(crops), normalize(crops)), "whole": (wholes, normalize(stretched)),
            "whole, PIL resize": (wholes, normalize(pil))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared"), help="the shared data folder")
    parser.add_argument("--photos", type=int, help="at most this many labeled photos (default: all 750)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    shared = pathlib.Path(args.shared)
    photos = onnx_int8.image_files(shared / "data/imagenet-photos")
    labels = labels_of(photos, shared / "data/imagenet_wnids.txt")
    labeled = [path for path, label in zip(photos, labels) if label >= 0][: args.photos]
    truth = labels[labels >= 0][: args.photos]
    calibration = [path for path, label in zip(photos, labels) if label < 0]
    weights = shared / "pretrained/torchvision_squeezenet1_1.ncnn.param"
    model, variables = fsq.load_pretrained(weights)
    convention = pretrained.input_convention(weights)
    names = imagenet.read_class_names(shared / "data/imagenet_classes.txt")
    print(f"{len(labeled)} labeled photos; int8 calibrated on the {len(calibration)} without a label")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        float32 = fsq.save_tflite(model, variables, pathlib.Path(scratch) / "f32.tflite", preprocessing=convention,
                                  class_names=names)  # fmt: skip
        int8 = fsq.save_tflite(model, variables, pathlib.Path(scratch) / "int8.tflite", int8=True,
                               calibration=convention.preprocess(calibration), preprocessing=convention,
                               class_names=names)  # fmt: skip
        for feed, (images, flax_input) in feeds(convention, labeled).items():
            flax = onnx_int8.flax_logits(model, variables, flax_input).argmax(1)
            (mp32, names32), (mp8, _) = mediapipe_top1(float32, images), mediapipe_top1(int8, images)
            rows.append({
                "feed": feed, "photos": len(labeled),
                "MediaPipe float32 = Flax (top-1)": float(np.mean(mp32 == flax)),
                "MediaPipe float32 names right": all(name == names[i] for name, i in zip(names32, mp32)),
                "MediaPipe int8 = MediaPipe float32 (top-1)": float(np.mean(mp8 == mp32)),
                "top-1 Flax": float(np.mean(flax == truth)), "top-1 MediaPipe float32": float(np.mean(mp32 == truth)),
                "top-1 MediaPipe int8": float(np.mean(mp8 == truth)),
            })  # fmt: skip
            print(json.dumps(rows[-1]))
    write_json({"mediapipe": rows}, args.out)


if __name__ == "__main__":
    main()
