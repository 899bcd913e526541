"""`squeezenet-export` options for devices: int8 quantization and fixed input shapes (flax_squeezenet.quantize)."""

from __future__ import annotations

import argparse

import numpy as np

from flax_squeezenet import quantize
from flax_squeezenet.export import to_onnx


def add_options(parser: argparse.ArgumentParser) -> None:
    """--int8, --calibration, --input-shape, --mean, --std (flax_squeezenet.quantize)."""
    group = parser.add_argument_group("int8 and fixed shapes")
    group.add_argument("--int8", action="store_true", help="static int8 quantization (QDQ); needs --calibration")
    group.add_argument(
        "--calibration", metavar="IMAGES",
        help="folder of images to calibrate --int8 on (a quarter is held back to check the result)",
    )  # fmt: skip
    group.add_argument(
        "--input-shape", type=parse_input_shape, metavar="NxCxHxW",
        help="fix the input shape (e.g. 1x3x224x224) for static-shape toolchains; default: free batch and size",
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


def export(args: argparse.Namespace, module, variables) -> str:
    """Write the int8 or fixed-shape export the options ask for; the line that reports its check."""
    if args.int8 != (args.calibration is not None):
        raise ValueError("--int8 and --calibration IMAGES go together")
    if args.input_shape is not None and min(args.input_shape[2:]) < module.min_input_size:
        raise ValueError(f"--input-shape: height and width must be at least {module.min_input_size}")
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
