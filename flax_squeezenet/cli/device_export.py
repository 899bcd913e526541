"""`squeezenet-export` for devices: int8 ONNX and fixed input shapes (flax_squeezenet.quantize), and
LiteRT float32 and int8 (flax_squeezenet.tflite)."""

from __future__ import annotations

import argparse

import numpy as np

from flax_squeezenet import files, quantize, tflite
from flax_squeezenet.export import to_onnx


def add_options(parser: argparse.ArgumentParser) -> None:
    """--int8, --calibration, --input-shape, --mean, --std (flax_squeezenet.quantize)."""
    group = parser.add_argument_group("int8 and fixed shapes")
    group.add_argument(
        "--int8", action="store_true",
        help="static int8 quantization (ONNX: QDQ; tflite: full-integer, int8 input and output); needs --calibration",
    )  # fmt: skip
    group.add_argument(
        "--calibration", metavar="IMAGES",
        help="folder of images to calibrate --int8 on (a quarter is held back to check the result)",
    )  # fmt: skip
    group.add_argument(
        "--input-shape", type=parse_input_shape, metavar="NxCxHxW",
        help="fix the input shape (e.g. 1x3x224x224) for static-shape toolchains; default: free batch and size "
        "(tflite: NHWC at --image-size, batch 1 that the interpreter may resize)",
    )  # fmt: skip
    group.add_argument("--mean", type=float, nargs="+", help="calibration normalisation (default: ImageNet's)")
    group.add_argument("--std", type=float, nargs="+", help="calibration normalisation (default: ImageNet's)")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """(N, C, H, W) from "NxCxHxW"."""
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NxCxHxW of positive integers (e.g. 1x3x224x224), got {text!r}")
    return shape


def check_options(args: argparse.Namespace, module) -> None:
    """Raise ValueError if the device options contradict each other or the model."""
    if args.int8 != (args.calibration is not None):
        raise ValueError("--int8 and --calibration IMAGES go together")
    if args.input_shape is not None and min(args.input_shape[2:]) < module.min_input_size:
        raise ValueError(f"--input-shape: height and width must be at least {module.min_input_size}")


def export(args: argparse.Namespace, module, variables) -> str:
    """Write the int8 or fixed-shape ONNX export the options ask for; the line that reports its check."""
    check_options(args, module)
    if args.int8:
        result = quantize.save_int8_onnx_from_folder(
            module, variables, args.output, args.calibration, image_size=args.image_size,
            input_shape=args.input_shape, mean=args.mean, std=args.std,
        )  # fmt: skip
        return (
            f"wrote int8 {args.output}; vs Flax on {result.images} held-back images: top-1 agreement "
            f"{100 * result.top1_agreement:.1f}%, max |logit difference| {result.max_logit_difference:.2f}"
        )
    proto = quantize.with_fixed_input_shape(to_onnx(module, variables), args.input_shape)
    path = quantize.write_onnx(proto, args.output)
    batch, channels, height, width = args.input_shape
    images = np.random.default_rng(0).standard_normal((batch, height, width, channels)).astype(np.float32)
    result = quantize.agreement(quantize.flax_logits(module, variables, images), quantize.run_onnx(path, images))
    shape = "x".join(map(str, args.input_shape))
    return f"wrote {path} (input {shape}); onnxruntime vs Flax: max |difference| {result.max_logit_difference:.2e}"


def export_tflite(args: argparse.Namespace, module, variables) -> str:
    """Write the LiteRT export the options ask for (float32, or int8 with --int8); the line that
    reports its check against the Flax model."""
    check_options(args, module)
    batch, height, width = None, args.image_size, args.image_size
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
            module, variables, args.output, args.calibration, image_size=height, batch=batch,
            mean=args.mean, std=args.std,
        )  # fmt: skip
        return (
            f"wrote int8 {files.user_path(args.output)} (input {shape}); vs Flax on {result.images} held-back "
            f"images: top-1 agreement {100 * result.top1_agreement:.1f}%, "
            f"max |logit difference| {result.max_logit_difference:.2f}"
        )
    images = np.random.default_rng(0).standard_normal((batch or 2, height, width, module.in_channels))
    images = images.astype(np.float32)
    with files.atomic_file(args.output) as staging:
        tflite.save_tflite(module, variables, staging, image_size=(height, width), batch=batch)
        result = quantize.agreement(quantize.flax_logits(module, variables, images), tflite.run_tflite(staging, images))
    return (
        f"wrote {files.user_path(args.output)} (float32, input {shape}); LiteRT vs Flax: "
        f"max |difference| {result.max_logit_difference:.2e}"
    )
