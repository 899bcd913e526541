"""`squeezenet-export` for devices: int8 ONNX and fixed input shapes (flax_squeezenet.deploy.onnx_int8), and
LiteRT float32 and int8 (flax_squeezenet.deploy.tflite)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

import numpy as np

from flax_squeezenet.cli.common import UsageError
from flax_squeezenet.compression.rounding import WEIGHT_ROUNDINGS
from flax_squeezenet.deploy import onnx_int8, tflite
from flax_squeezenet.deploy.onnx import save_onnx
from flax_squeezenet.storage import files
from flax_squeezenet.weights.conventions import IMAGENET, InputConvention
from flax_squeezenet.weights.preprocess import CROP_SIZE, RESIZE_SIZE
from flax_squeezenet.weights.pretrained import training_image_files


def add_options(parser: argparse.ArgumentParser) -> None:
    """--int8, --calibration, --input-shape, --mean, --std (flax_squeezenet.deploy.onnx_int8)."""
    group = parser.add_argument_group("int8 and fixed shapes")
    group.add_argument(
        "--int8", action="store_true",
        help="static int8 quantization (ONNX: QDQ; tflite: full-integer, uint8 input and output); calibrated on "
        "--calibration, or on the training photos the --weights directory records (python -m train saves them)",
    )  # fmt: skip
    group.add_argument(
        "--calibration", metavar="IMAGES",
        help="folder of images to calibrate --int8 on (a quarter is held back to check the result; default: the "
        "weights' own training photos where recorded)",
    )  # fmt: skip
    group.add_argument(
        "--input-shape", type=parse_input_shape, metavar="SHAPE",
        help="fix the input shape in the target's layout for static-shape toolchains: onnx NxCxHxW (e.g. "
        "1x3x224x224), tflite NxHxWxC (e.g. 1x224x224x3); default: free batch and size "
        "(tflite: NHWC at --image-size, batch 1 that the interpreter may resize)",
    )  # fmt: skip
    group.add_argument(
        "--weight-rounding", choices=WEIGHT_ROUNDINGS, default=None,
        help="int8 weights (ONNX and tflite): AdaRound to each layer's float output on the calibration photos "
        "(the default: closer to float32, see BENCHMARKS.md) or round to nearest (faster to write)",
    )  # fmt: skip
    group.add_argument("--mean", type=float, nargs="+", help="calibration normalisation (default: the weights' own)")
    group.add_argument("--std", type=float, nargs="+", help="calibration normalisation (default: the weights' own)")


LAYOUTS = {"onnx": "NCHW", "tflite": "NHWC"}  # the input layout of each --format's file


def parse_input_shape(text: str) -> tuple[int, ...]:
    """The four sizes of "AxBxCxD", in the order written (their layout depends on --format: `input_shape`)."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected four positive integers: NxCxHxW for onnx (e.g. 1x3x224x224), "
                                         f"NxHxWxC for tflite (e.g. 1x224x224x3), got {text!r}")  # fmt: skip
    return shape


def input_shape(args: argparse.Namespace) -> tuple[int, int, int, int] | None:
    """--input-shape as (N, C, H, W), read in the layout of --format's file (`LAYOUTS`)."""
    if args.input_shape is None:
        return None
    if args.format == "tflite":
        batch, height, width, channels = args.input_shape
        return batch, channels, height, width
    return tuple(args.input_shape)


def check_input_shape(args: argparse.Namespace, module) -> None:
    """UsageError naming the layout if --input-shape does not fit the model."""
    shape = input_shape(args)
    if shape is None:
        return
    layout, written = LAYOUTS[args.format], "x".join(map(str, args.input_shape))
    batch, channels, height, width = shape
    if channels != module.in_channels:
        expected = f"Nx{module.in_channels}xHxW" if layout == "NCHW" else f"NxHxWx{module.in_channels}"
        raise UsageError(f"--input-shape {written}: expected an input shape {expected} ({layout}, the {args.format} "
                         f"layout) for this {module.in_channels}-channel model, got {channels} channels")  # fmt: skip
    if min(height, width) < module.min_input_size:
        raise UsageError(f"--input-shape {written} ({layout}, the {args.format} layout): height and width must be "
                         f"at least {module.min_input_size}, got {height}x{width}")  # fmt: skip


def physical_memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(module, batch: int, height: int, width: int, option: str) -> None:
    """UsageError, before anything is allocated, if checking the export on `batch` images of
    `height` x `width` cannot fit in this machine's memory.

    The bound is what the check must hold at once at the least: the input batch and the stem
    convolution's output, float32 (tests/test_output_paths.py::test_an_input_too_large_for_memory_is_refused).
    """
    stem = module.plan[0]
    pixels = batch * (height * width * module.in_channels
                      + math.ceil(height / stem.stride) * math.ceil(width / stem.stride) * stem.out_channels)  # fmt: skip
    needed, available = 4 * pixels, physical_memory_bytes()
    if needed > available:
        raise UsageError(f"{option}: checking the export needs at least {needed / 2**30:,.0f} GiB for "
                         f"{batch} input(s) of {height}x{width}, more than this machine's "
                         f"{available / 2**30:,.0f} GiB of memory")  # fmt: skip


DEFAULT_WEIGHT_ROUNDING = "adaround"  # costs 0.3 point of ImageNet top-1 where "nearest" costs 0.9 (issue #28)


def calibration_files(args: argparse.Namespace) -> list:
    """The images to calibrate --int8 on: --calibration's, else the training photos the --weights
    directory records (`pretrained.training_image_files`); ValueError when there are neither."""
    if args.calibration is not None:
        return onnx_int8.image_files(args.calibration)
    recorded = training_image_files(args.weights) if args.weights else None
    if not recorded:
        raise ValueError("--int8 needs --calibration IMAGES: these weights record no training photos "
                         "(a model saved by python -m train from an image folder does)")  # fmt: skip
    return recorded


def check_options(args: argparse.Namespace, module) -> None:
    """Raise ValueError if the device options contradict each other (`check_input_shape`: the model)."""
    if args.calibration is not None and not args.int8:
        raise ValueError("--calibration IMAGES calibrates --int8: add --int8")


def calibration_convention(args: argparse.Namespace, module, convention: InputConvention | None):
    """The input convention to calibrate and check with: the weights' own (`convention`), with
    --mean/--std and the image size (--input-shape's, else --image-size) applied; None for a
    1-channel model without its own or --mean/--std."""
    if (args.mean is None) != (args.std is None):
        raise ValueError("expected both --mean and --std, or neither")
    if convention is not None and convention.channels != module.in_channels:
        convention = None
    if args.mean is not None:
        order = convention.channel_order if convention is not None else "RGB" if module.in_channels == 3 else "L"
        convention = dataclasses.replace(convention or InputConvention(channel_order=order, mean=tuple(args.mean),
                                         std=tuple(args.std)), mean=tuple(args.mean), std=tuple(args.std))  # fmt: skip
    if convention is None and module.in_channels == 3:
        convention = IMAGENET
    size = input_shape(args)[2] if args.input_shape is not None else args.image_size
    if convention is None or size is None or size == convention.crop_size:
        return convention
    return dataclasses.replace(convention, crop_size=size, resize_size=RESIZE_SIZE if size == CROP_SIZE else size)


def calibration_split(args: argparse.Namespace) -> tuple[list, list]:
    """(calibration, held back) files of --calibration, as both int8 exports split them."""
    return onnx_int8.split_held_back(calibration_files(args), onnx_int8.HELD_BACK, onnx_int8.MAX_IMAGES)


def export(args: argparse.Namespace, module, variables, convention: InputConvention | None,
           class_names: list[str] | None) -> str:  # fmt: skip
    """Write the int8 or fixed-shape ONNX export the options ask for, with `class_names`; the line
    that reports its check.

    Calibration and the check prepare images by the weights' own input `convention`. The file
    appears only once its check has run.
    """
    check_options(args, module)
    convention = calibration_convention(args, module, convention)
    shape = input_shape(args)
    if args.int8:
        calibration, held_back_files = calibration_split(args)
        held_back = onnx_int8.calibration_images(held_back_files, module.in_channels, convention)
        with files.atomic_file(args.output) as staging:
            save_onnx(module, variables, staging, preprocessing=convention, int8=True, calibration=calibration,
                      input_shape=shape, weight_rounding=args.weight_rounding or DEFAULT_WEIGHT_ROUNDING,
                      class_names=class_names)  # fmt: skip
            result = onnx_int8.agreement(onnx_int8.flax_logits(module, variables, held_back),
                                        onnx_int8.run_onnx(staging, held_back))  # fmt: skip
        return f"wrote int8 {files.user_path(args.output)}; {result.describe()}"
    batch, channels, height, width = shape
    images = np.random.default_rng(0).standard_normal((batch, height, width, channels)).astype(np.float32)
    with files.atomic_file(args.output) as staging:
        save_onnx(module, variables, staging, preprocessing=convention, input_shape=shape, class_names=class_names)
        result = onnx_int8.agreement(onnx_int8.flax_logits(module, variables, images), onnx_int8.run_onnx(staging, images))
    return (f"wrote {files.user_path(args.output)} (input {'x'.join(map(str, shape))} NCHW); onnxruntime vs Flax: "
            f"max |difference| {result.max_logit_difference:.2e}")  # fmt: skip


def export_tflite(args: argparse.Namespace, module, variables, convention: InputConvention | None,
                  class_names: list[str] | None) -> str:  # fmt: skip
    """Write the LiteRT export the options ask for (float32, or int8 with --int8), with
    `class_names` as its labels; the line that reports its check against the Flax model. Calibration prepares images by the weights' own
    input `convention`. The file appears only once its check has run."""
    check_options(args, module)
    convention = calibration_convention(args, module, convention)
    size = args.image_size or (CROP_SIZE if convention is None else convention.crop_size)
    batch, height, width = None, size, size
    if args.input_shape is not None:
        batch, _, height, width = input_shape(args)
    shape = f"{batch or 1}x{height}x{width}x{module.in_channels} NHWC" + ("" if batch else ", batch resizable")
    if args.int8:
        if height != width:
            raise UsageError(f"expected a square --input-shape for --int8 (H = W), got {height}x{width}")
        with files.atomic_file(args.output) as staging:
            result = tflite.save_tflite_from_folder(module, variables, staging, calibration_files(args),
                                                    preprocessing=convention, batch=batch,
                                                    class_names=class_names,
                                                    weight_rounding=args.weight_rounding or DEFAULT_WEIGHT_ROUNDING)  # fmt: skip
        return f"wrote int8 {files.user_path(args.output)} (input {shape}); {result.describe()}"
    images = np.random.default_rng(0).standard_normal((batch or 2, height, width, module.in_channels))
    images = images.astype(np.float32)
    with files.atomic_file(args.output) as staging:
        tflite.save_tflite(module, variables, staging, image_size=(height, width), batch=batch,
                           preprocessing=convention, class_names=class_names)  # fmt: skip
        result = onnx_int8.agreement(onnx_int8.flax_logits(module, variables, images), tflite.run_tflite(staging, images))
    return (
        f"wrote {files.user_path(args.output)} (float32, input {shape}); LiteRT vs Flax: "
        f"max |difference| {result.max_logit_difference:.2e}"
    )


def check_sizes(args: argparse.Namespace, module, image_size: int) -> None:
    """UsageError if checking (or calibrating) the export at --input-shape or `image_size` cannot fit in memory."""
    shape = input_shape(args)
    if shape is None:
        batch, height, width, option = 2, image_size, image_size, f"--image-size {image_size}"
    else:
        (batch, _, height, width), option = shape, f"--input-shape {'x'.join(map(str, args.input_shape))}"
    if args.int8:
        batch = max(batch, onnx_int8.CALIBRATION_BATCH)
    check_fits_in_memory(module, batch, height, width, option)
