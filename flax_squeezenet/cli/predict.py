"""`squeezenet-predict IMAGE...`: the top-k ImageNet classes of each image.

Errors the user can fix (a missing file, something that is not an image, weights that don't fit
the model, no network for a download) print one line on stderr and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import jax
import numpy as np

from flax_squeezenet.conventions import input_convention
from flax_squeezenet.download import DownloadError
from flax_squeezenet.imagenet import NUM_CLASSES, imagenet_class_names
from flax_squeezenet.pretrained import PRETRAINED, load_pretrained
from flax_squeezenet.xla_options import compiler_options

PROG = "squeezenet-predict"
DEFAULT_MODEL = "squeezenet1_1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Classify images with a SqueezeNet trained on ImageNet (top-k classes)."
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument(
        "--model",
        help=f"without --weights: the pretrained weights to download ({', '.join(PRETRAINED)}; "
        f"default {DEFAULT_MODEL}); with --weights: the architecture (default: as the file says)",
    )
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="local weights: a torchvision .pth, a save_pretrained directory or an ncnn .param/.bin file",
    )
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes to show per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return parser


def class_labels(num_classes: int) -> list[str]:
    """ImageNet names for a 1000-class head, else (or offline without a cached copy) "class i"."""
    if num_classes == NUM_CLASSES:
        try:
            return imagenet_class_names()
        except (DownloadError, ValueError) as error:
            print(f"{PROG}: warning: no class names, printing class numbers ({error})", file=sys.stderr)
    return [f"class {index}" for index in range(num_classes)]


def predict(args: argparse.Namespace) -> list[dict]:
    """For each image, its top-k classes as {"class", "name", "probability"} dicts."""
    source = (args.model or DEFAULT_MODEL) if args.weights is None else args.weights
    images = input_convention(source).preprocess(list(args.images))  # the weights' own resize, crop, mean, std
    module, variables = load_pretrained(source, model=args.model)
    if not 1 <= args.top <= module.num_classes:
        raise ValueError(f"--top must be between 1 and {module.num_classes}, got {args.top}")
    apply = jax.jit(module.apply, compiler_options=compiler_options(module.dtype))
    probabilities = np.asarray(jax.nn.softmax(apply(variables, images)))
    labels = class_labels(module.num_classes)
    results = []
    for path, row in zip(args.images, probabilities):
        top = np.argsort(-row, kind="stable")[: args.top]
        predictions = [{"class": int(i), "name": labels[i], "probability": float(row[i])} for i in top]
        results.append({"image": path, "predictions": predictions})
    return results


def format_text(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(result["image"])
        lines += [f"  {p['probability']:7.2%}  {p['class']:4d}  {p['name']}" for p in result["predictions"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model is None and args.weights is None:
        args.model = DEFAULT_MODEL
    if args.weights is None and args.model not in PRETRAINED:
        print(f"{PROG}: error: no pretrained weights named {args.model!r}; expected one of "
              f"{', '.join(PRETRAINED)}, or pass --weights PATH", file=sys.stderr)  # fmt: skip
        return 1
    try:
        results = predict(args)
    except (OSError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=2) if args.json else format_text(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
