"""`squeezenet-export` for devices: int8 ONNX and fixed input shapes (flax_squeezenet.quantize), and
LiteRT float32 and int8 (flax_squeezenet.tflite)."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from flax_squeezenet import files, quantize, tflite
from flax_squeezenet.conventions import IMAGENET, InputConvention
from flax_squeezenet.export import save_onnx
from flax_squeezenet.preprocess import CROP_SIZE, RESIZE_SIZE
from flax_squeezenet.pretrained import training_image_files
from flax_squeezenet.rounding import WEIGHT_ROUNDINGS


def add_options(parser: argparse.ArgumentParser) -> None:
    """--int8, --calibration, --input-shape, --mean, --std (flax_squeezenet.quantize)."""
    group = parser.add_argument_group("int8 and fixed shapes")
    group.add_argument(
        "--int8", action="store_true",
        help="static int8 quantization (ONNX: QDQ; tflite: full-integer, int8 input and output); calibrated on "
        "--calibration, or on the training photos the --weights directory records (python -m train saves them)",
    )  # fmt: skip
    group.add_argument(
        "--calibration", metavar="IMAGES",
        help="folder of images to calibrate --int8 on (a quarter is held back to check the result; default: the "
        "weights' own training photos where recorded)",
    )  # fmt: skip
    group.add_argument(
        "--input-shape", type=parse_input_shape, metavar="NxCxHxW",
        help="fix the input shape (e.g. 1x3x224x224) for static-shape toolchains; default: free batch and size "
        "(tflite: NHWC at --image-size, batch 1 that the interpreter may resize)",
    )  # fmt: skip
    group.add_argument(
        "--weight-rounding", choices=WEIGHT_ROUNDINGS, default=None,
        help="int8 weights (ONNX and tflite): AdaRound to each layer's float output on the calibration photos "
        "(the default: closer to float32, see BENCHMARKS.md) or round to nearest (faster to write)",
    )  # fmt: skip
    group.add_argument("--mean", type=float, nargs="+", help="calibration normalisation (default: the weights' own)")
    group.add_argument("--std", type=float, nargs="+", help="calibration normalisation (default: the weights' own)")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """(N, C, H, W) from "NxCxHxW"."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NxCxHxW of positive integers (e.g. 1x3x224x224), got {text!r}")
    return shape


DEFAULT_WEIGHT_ROUNDING = "adaround"  # costs 0.3 point of ImageNet top-1 where "nearest" costs 0.9 (issue #28)


def calibration_files(args: argparse.Namespace) -> list:
    """The images to calibrate --int8 on: --calibration's, else the training photos the --weights
    directory records (`pretrained.training_image_files`); ValueError when there are neither."""
    if args.calibration is not None:
        return quantize.image_files(args.calibration)
    recorded = training_image_files(args.weights) if args.weights else None
    if not recorded:
        raise ValueError("--int8 needs --calibration IMAGES: these weights record no training photos "
                         "(a model saved by python -m train from an image folder does)")  # fmt: skip
    return recorded


def check_options(args: argparse.Namespace, module) -> None:
    """Raise ValueError if the device options contradict each other or the model."""
    if args.calibration is not None and not args.int8:
        raise ValueError("--calibration IMAGES calibrates --int8: add --int8")
    if args.input_shape is not None and min(args.input_shape[2:]) < module.min_input_size:
        raise ValueError(f"--input-shape: height and width must be at least {module.min_input_size}")


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
    size = args.input_shape[2] if args.input_shape is not None else args.image_size
    if convention is None or size is None or size == convention.crop_size:
        return convention
    return dataclasses.replace(convention, crop_size=size, resize_size=RESIZE_SIZE if size == CROP_SIZE else size)


def export(args: argparse.Namespace, module, variables, convention: InputConvention | None) -> str:
    """Write the int8 or fixed-shape ONNX export the options ask for; the line that reports its check.

    Calibration and the check prepare images by the weights' own input `convention`.
    """
    check_options(args, module)
    convention = calibration_convention(args, module, convention)
    if args.int8:
        calibration, held_back_files = quantize.split_held_back(
            calibration_files(args), quantize.HELD_BACK, quantize.MAX_IMAGES
        )
        held_back = quantize.calibration_images(held_back_files, module.in_channels, convention)
        path = save_onnx(
            module, variables, args.output, preprocessing=convention, int8=True,
            calibration=calibration, input_shape=args.input_shape, weight_rounding=args.weight_rounding or DEFAULT_WEIGHT_ROUNDING,
        )  # fmt: skip
        result = quantize.agreement(
            quantize.flax_logits(module, variables, held_back), quantize.run_onnx(path, held_back)
        )
        return (
            f"wrote int8 {path}; vs Flax on {result.images} held-back images: top-1 agreement "
            f"{100 * result.top1_agreement:.1f}%, max |logit difference| {result.max_logit_difference:.2f}"
        )
    path = save_onnx(module, variables, args.output, preprocessing=convention, input_shape=args.input_shape)
    batch, channels, height, width = args.input_shape
    images = np.random.default_rng(0).standard_normal((batch, height, width, channels)).astype(np.float32)
    result = quantize.agreement(quantize.flax_logits(module, variables, images), quantize.run_onnx(path, images))
    shape = "x".join(map(str, args.input_shape))
    return f"wrote {path} (input {shape}); onnxruntime vs Flax: max |difference| {result.max_logit_difference:.2e}"


def export_tflite(args: argparse.Namespace, module, variables, convention: InputConvention | None) -> str:
    """Write the LiteRT export the options ask for (float32, or int8 with --int8); the line that
    reports its check against the Flax model. Calibration prepares images by the weights' own
    input `convention`."""
    check_options(args, module)
    convention = calibration_convention(args, module, convention)
    size = args.image_size or (CROP_SIZE if convention is None else convention.crop_size)
    batch, height, width = None, size, size
    if args.input_shape is not None:
        batch, channels, height, width = args.input_shape
        if channels != module.in_channels:
            raise ValueError(
                f"expected an input shape Nx{module.in_channels}xHxW for this model, got {channels} channels"
            )
    shape = f"{batch or 1}x{height}x{width}x{module.in_channels} NHWC" + ("" if batch else ", batch resizable")
    if args.int8:
        if height != width:
            raise ValueError(f"expected a square --input-shape for --int8 (H = W), got {height}x{width}")
        result = tflite.save_tflite_from_folder(
            module, variables, args.output, calibration_files(args), preprocessing=convention, batch=batch,
            weight_rounding=args.weight_rounding or DEFAULT_WEIGHT_ROUNDING,
        )
        return (
            f"wrote int8 {files.user_path(args.output)} (input {shape}); vs Flax on {result.images} held-back "
            f"images: top-1 agreement {100 * result.top1_agreement:.1f}%, "
            f"max |logit difference| {result.max_logit_difference:.2f}"
        )
    images = np.random.default_rng(0).standard_normal((batch or 2, height, width, module.in_channels))
    images = images.astype(np.float32)
    with files.atomic_file(args.output) as staging:
        tflite.save_tflite(module, variables, staging, image_size=(height, width), batch=batch,
                           preprocessing=convention)  # fmt: skip
        result = quantize.agreement(quantize.flax_logits(module, variables, images), tflite.run_tflite(staging, images))
    return (
        f"wrote {files.user_path(args.output)} (float32, input {shape}); LiteRT vs Flax: "
        f"max |difference| {result.max_logit_difference:.2e}"
    )
