"""`squeezenet-predict IMAGE...`: the top-k ImageNet classes of each image.

Images are read and classified in batches of `--batch-size`, so memory stays bounded however many
are given; a progress bar shows on a terminal. Errors the user can fix (a missing file, something
that is not an image, weights that don't fit the model or are unsafe to read, no network for a
download) print one line on stderr and exit with status 1; a bad command line exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import tqdm

from flax_squeezenet.cli.common import OneLineErrorParser, positive_int, quiet_library_logs
from flax_squeezenet.storage.download import DownloadError
from flax_squeezenet.weights.conventions import InputConvention
from flax_squeezenet.weights.imagenet import NUM_CLASSES, imagenet_class_names
from flax_squeezenet.weights.preprocess import check_image
from flax_squeezenet.weights.pretrained import PRETRAINED, input_convention, load_pretrained
from flax_squeezenet.zoo.xla_options import compiler_options

PROG = "squeezenet-predict"
DEFAULT_MODEL = "squeezenet1_1"
DEFAULT_BATCH_SIZE = 32


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
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
    parser.add_argument("--top", type=positive_int, default=5, metavar="K", help="classes to show per image (default 5)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
        help=f"images read and classified at a time; bounds memory (default {DEFAULT_BATCH_SIZE})",
    )  # fmt: skip
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


def batch_probabilities(
    apply, variables, convention: InputConvention, paths: Sequence[str], batch_size: int
) -> Iterator[np.ndarray]:
    """The class probabilities of `paths` preprocessed by `convention`, one (n, classes) array per
    batch of at most `batch_size`.

    Every batch is padded to `batch_size` so the model compiles once.
    """
    for start in range(0, len(paths), batch_size):
        images = convention.preprocess(list(paths[start : start + batch_size]))
        padded = np.zeros((batch_size, *images.shape[1:]), images.dtype)
        padded[: len(images)] = images
        yield np.asarray(jax.nn.softmax(apply(variables, padded)))[: len(images)]


def predict(args: argparse.Namespace) -> list[dict]:
    """For each image, its top-k classes as {"class", "name", "probability"} dicts."""
    for path in args.images:  # Fail on a typo or a non-image before loading weights and decoding images.
        check_image(path)
    source = (args.model or DEFAULT_MODEL) if args.weights is None else args.weights
    convention = input_convention(source)  # the weights' own resize, crop, mean, std and channels
    module, variables = load_pretrained(source, model=args.model)
    if args.top > module.num_classes:
        raise ValueError(f"--top must be between 1 and {module.num_classes}, got {args.top}")
    apply = jax.jit(module.apply, compiler_options=compiler_options(module.dtype))
    labels = class_labels(module.num_classes)
    batch_size = min(args.batch_size, len(args.images))
    results = []
    with tqdm.tqdm(total=len(args.images), unit="image", file=sys.stderr, disable=None, leave=False) as progress:
        for probabilities in batch_probabilities(apply, variables, convention, args.images, batch_size):
            for row in probabilities:
                top = np.argsort(-row, kind="stable")[: args.top]
                predictions = [{"class": int(i), "name": labels[i], "probability": float(row[i])} for i in top]
                results.append({"image": args.images[len(results)], "predictions": predictions})
            progress.update(len(probabilities))
    return results


def format_text(results: list[dict]) -> str:
    lines = []
    for result in results:
        lines.append(result["image"])
        lines += [f"  {p['probability']:7.2%}  {p['class']:4d}  {p['name']}" for p in result["predictions"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_logs()
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
