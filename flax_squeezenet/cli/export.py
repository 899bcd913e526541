"""`squeezenet-export --format onnx|tflite --output FILE`: write a SqueezeNet for deployment.

The file appears only once the export is complete and onnxruntime agrees with Flax on it; an
existing file at `--output` is kept if anything fails. Errors the user can fix (missing weights,
weights that don't fit the model or are unsafe to read, no network for a download) print one line
on stderr and exit with status 1; a bad command line exits with status 2, as does an --output that
is one of the inputs (the weights, a calibration image) or is not named for --format, and an input
shape or image size whose check cannot fit in memory.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax_squeezenet.cli import device_export
from flax_squeezenet.cli.common import (
    COMMAND_ERRORS,
    OneLineErrorParser,
    positive_int,
    quiet_library_logs,
    report_error,
)
from flax_squeezenet.deploy import onnx_int8
from flax_squeezenet.deploy.onnx import save_onnx
from flax_squeezenet.storage import files
from flax_squeezenet.storage.download import DownloadError
from flax_squeezenet.weights.imagenet import NUM_CLASSES, imagenet_class_names
from flax_squeezenet.weights.preprocess import CROP_SIZE
from flax_squeezenet.weights.pretrained import (
    PRETRAINED,
    input_convention,
    load_pretrained,
    saved_class_names,
    source_paths,
)
from flax_squeezenet.zoo.models import MODELS, create_model

PROG = "squeezenet-export"
DEFAULT_MODEL = "squeezenet1_1"
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite"}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="Export a SqueezeNet to ONNX (NCHW float32 input 'images', output 'logits', "
        "dynamic batch) for onnxruntime, onnxruntime-mobile, ncnn (via pnnx) or TensorRT, or to LiteRT "
        "(TensorFlow Lite: NHWC input, float32 or full-integer int8) for Android and microcontrollers.",
    )
    parser.add_argument(
        "--format", choices=["onnx", "tflite"], default="onnx",
        help="output format: onnx, or tflite (LiteRT; needs pip install -e '.[litert]')",
    )  # fmt: skip
    parser.add_argument("--output", required=True, metavar="FILE", help="where to write the model")
    parser.add_argument(
        "--model",
        help=f"without --weights: the published weights to export ({', '.join(PRETRAINED)}; default "
        f"{DEFAULT_MODEL}), or with --random-init any variant ({', '.join(MODELS)}); "
        "with --weights: the architecture (default: as the file says)",
    )
    parser.add_argument(
        "--weights", metavar="PATH",
        help="a checkpoint: save_pretrained directory, torchvision .pth, or ncnn .param/.bin",
    )  # fmt: skip
    parser.add_argument(
        "--random-init", action="store_true",
        help="export freshly initialised weights (seed 0) of --model, e.g. to test a deployment",
    )  # fmt: skip
    parser.add_argument(
        "--num-classes", type=positive_int, metavar="N",
        help="classifier outputs; with weights of another count, a fresh classifier replaces theirs",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=positive_int, metavar="PIXELS",
        help="input size to check (and calibrate) the export at (the ONNX model accepts any size; "
        "a tflite model has this size; default: the weights' crop size, 224 for ImageNet's)",
    )  # fmt: skip
    device_export.add_options(parser)
    return parser


def load_module(args: argparse.Namespace):
    """(module, variables) named by the command line."""
    if args.random_init:
        if args.weights is not None:
            raise ValueError("--random-init and --weights exclude each other")
        name = args.model or DEFAULT_MODEL
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        module = create_model(name, **kwargs)
        size = module.min_input_size
        variables = module.init(jax.random.key(0), jnp.zeros((1, size, size, module.in_channels)))
        return module, variables
    if args.weights is None:
        name = args.model or DEFAULT_MODEL
        if name not in PRETRAINED:
            raise ValueError(
                f"no published weights named {name!r}; expected one of {', '.join(PRETRAINED)}, "
                "or pass --weights PATH, or --random-init"
            )
        return load_pretrained(name, num_classes=args.num_classes)
    return load_pretrained(args.weights, model=args.model, num_classes=args.num_classes)


def class_names(source: str | None, module) -> list[str] | None:
    """The names of the model's classes for the exported file: those saved with the weights, else
    ImageNet's for a 1,000-class head of published or converted weights (a warning and None when
    they cannot be had offline), else None (random init, or a new head of --num-classes)."""
    if source is None:
        return None
    saved = saved_class_names(source)
    if saved is not None:
        return saved if len(saved) == module.num_classes else None
    if module.num_classes != NUM_CLASSES:
        return None
    try:
        return imagenet_class_names()
    except (DownloadError, ValueError) as error:
        print(f"{PROG}: warning: the file carries no class names ({error})", file=sys.stderr)
        return None


def check_export(path: str, module, variables, image_size: int) -> float:
    """Largest |onnxruntime - Flax| logit difference on two random images of `image_size` pixels."""
    import onnxruntime

    images = np.random.default_rng(0).standard_normal((2, image_size, image_size, module.in_channels))
    images = images.astype(np.float32)
    expected = np.asarray(jax.jit(module.apply)(variables, images))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": images.transpose(0, 3, 1, 2)})
    return float(np.max(np.abs(got - expected)))


def check_output(args: argparse.Namespace) -> None:
    """Raise ValueError if --output cannot be a file to write, `files.OutputPathError` if it is named
    for another format or would overwrite what the command reads (checked before any work is done)."""
    output = args.output
    path = files.user_path(output)
    if path.is_dir():
        raise ValueError(f"--output {output} is a directory: expected a file path such as model.onnx")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"--output {output}: {blocking} is a file, not a directory")
    files.check_suffix(output, SUFFIXES[args.format], args.format)
    weights = [] if args.weights is None else source_paths(args.weights)
    calibration = [] if args.calibration is None else onnx_int8.image_files(args.calibration)
    files.check_output_is_not_input(output, *weights, *calibration)


def warn_of_a_small_calibration_set(args: argparse.Namespace) -> None:
    """Tell the user, after an int8 export, that its calibration set was too small to trust the file."""
    if args.int8:
        warning = onnx_int8.calibration_warning(len(device_export.calibration_split(args)[0]))
        if warning is not None:
            print(f"{PROG}: warning: {warning}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_library_logs()
    try:
        check_output(args)
        module, variables = load_module(args)
        if args.image_size is not None and args.image_size < module.min_input_size:
            raise ValueError(f"--image-size must be at least {module.min_input_size}, got {args.image_size}")
        source = None if args.random_init else args.weights or args.model or DEFAULT_MODEL
        convention = None if source is None else input_convention(source)
        names = class_names(source, module)
        image_size = args.image_size or (CROP_SIZE if convention is None else convention.crop_size)
        device_export.check_input_shape(args, module)
        device_export.check_sizes(args, module, image_size)
        if args.format == "tflite" or args.int8 or args.calibration or args.input_shape:
            write = device_export.export_tflite if args.format == "tflite" else device_export.export
            print(write(args, module, variables, convention, names))
            warn_of_a_small_calibration_set(args)
            return 0
        with files.atomic_file(args.output) as staging:
            save_onnx(module, variables, staging, preprocessing=convention, class_names=names)
            difference = check_export(str(staging), module, variables, image_size)
    except COMMAND_ERRORS as error:
        return report_error(PROG, error)
    path = files.user_path(args.output)
    print(f"wrote {path} ({module.num_classes} classes); onnxruntime vs Flax at "
          f"{image_size}x{image_size}: max |difference| {difference:.2e}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
