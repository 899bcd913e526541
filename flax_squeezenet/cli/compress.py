"""`squeezenet-compress WEIGHTS --output FILE`: Deep Compression after training.

Prunes by magnitude (with --density), shares weights (--bits per weight), Huffman-codes the result
into a `.sqz` file (`load_pretrained` reads it) or writes the paper's `.net` format, then prints the
sizes and the largest logit change. Compression with retraining (prune -> retrain -> share ->
fine-tune) is the training program's: `python -m train.compress` from the checkout, which takes
these arguments too. Errors the user can fix print one line on stderr and exit with status 1; an
--output that is one of the inputs, or whose suffix is not --format's (.sqz, .net), is refused before
any work with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import numpy as np

from flax_squeezenet.cli.common import COMMAND_ERRORS, parse_with_config_overrides, report_error
from flax_squeezenet.compression import FORMATS, compress, save_compressed
from flax_squeezenet.compression.api import FORMAT_SUFFIXES, variant_name
from flax_squeezenet.compression.pruning import kernel_density
from flax_squeezenet.compression.rounding import WEIGHT_ROUNDINGS
from flax_squeezenet.compression.sensitivity import sensitivity_densities
from flax_squeezenet.storage import files
from flax_squeezenet.weights.netfile import check_net_model
from flax_squeezenet.weights.pretrained import input_convention, load_pretrained, source_paths
from flax_squeezenet.zoo.models import count_params
from flax_squeezenet.zoo.xla_options import compiler_options

PROG = "squeezenet-compress"
DENSITY_PLANS = ("uniform", "sensitivity")
RANDOM_IMAGES = 4
RETRAINING_MOVED = ("compression with retraining is the training program's: from the root of a checkout, run "
                    "python -m train.compress WEIGHTS --output FILE --workdir DIR --config PRESET [--config.key=value ...]")  # fmt: skip


def add_compression_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every compression takes: the weights, the output file and its format, pruning and sharing."""
    parser.add_argument(
        "weights", metavar="WEIGHTS",
        help="a pretrained name, or a .pth, ncnn .param, .net, .sqz file or save_pretrained directory",
    )  # fmt: skip
    parser.add_argument("--output", required=True, metavar="FILE", help="the compressed file to write")
    parser.add_argument(
        "--density", type=float, metavar="D", help="fraction of the conv weights to keep, spread by --density-plan (default: no pruning)"
    )
    parser.add_argument(
        "--density-plan", choices=DENSITY_PLANS, default="uniform",
        help="uniform: every conv keeps D of its weights (default); sensitivity: D of all conv weights are "
        "kept, more in the layers whose pruning changes the predictions most (measured on --images, or on "
        "the training data when retraining)",
    )  # fmt: skip
    parser.add_argument("--bits", type=int, default=8, metavar="B", help="bits per shared weight, 1 to 8 (default 8)")
    parser.add_argument(
        "--format", choices=FORMATS, default="squeezenet",
        help="squeezenet: a .sqz file load_pretrained reads (default); "
        "net: the paper's .net file (v1.0, 1000 classes, 8 bits)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compress SqueezeNet weights as Deep Compression does, without retraining: "
        "magnitude pruning, weight sharing (k-means), Huffman coding.",
    )
    add_compression_arguments(parser)
    parser.add_argument(
        "--weight-rounding", choices=WEIGHT_ROUNDINGS, default="nearest",
        help="nearest: each weight takes its nearest shared value (default); adaround: the value below or above "
        "it that keeps each layer's output on --images closest to the uncompressed model's, biases corrected "
        "(slower)",
    )  # fmt: skip
    parser.add_argument(
        "--images", nargs="+", metavar="IMAGE",
        help=f"images to measure the logit change on, to measure --density-plan sensitivity and to fit "
        f"--weight-rounding adaround, prepared as the weights' own input convention says (default: "
        f"{RANDOM_IMAGES} random inputs)",
    )  # fmt: skip
    parser.add_argument("--retrain-workdir", metavar="DIR", help="moved: retraining runs as python -m train.compress")
    parser.add_argument("--config", metavar="PRESET", help="moved: retraining runs as python -m train.compress")
    return parser


def _sample_images(paths: Sequence[str] | None, module, weights: str) -> np.ndarray:
    """`paths` prepared by the weights' own input convention, else random inputs of its size."""
    convention = input_convention(weights)
    if convention.channels != module.in_channels:
        raise ValueError(f"{weights}: a {module.in_channels}-channel model whose weights carry no input convention "
                         f"for {module.in_channels}-channel images (save them with save_pretrained(..., "
                         "preprocessing=InputConvention(...)))")  # fmt: skip
    if paths:
        return convention.preprocess(list(paths))
    shape = (RANDOM_IMAGES, convention.crop_size, convention.crop_size, module.in_channels)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def largest_logit_change(module, variables, params, images: np.ndarray) -> float:
    """max |logits with `params` - logits with `variables`| of `module` over `images`."""
    apply = jax.jit(module.apply, compiler_options=compiler_options(module.dtype))
    return float(np.max(np.abs(np.asarray(apply({"params": params}, images)) - np.asarray(apply(variables, images)))))


def describe_plan(plan: dict[str, float]) -> str:
    """One line naming each pruned layer's density."""
    pruned = ", ".join(f"{layer} {density:g}" for layer, density in plan.items())
    return f"sensitivity plan (other convs kept whole): {pruned or 'nothing pruned'}"


def check_format_holds(module, file_format: str) -> None:
    """ValueError unless a file of `file_format` can hold `module` (the .net file holds one model)."""
    if file_format == "net":
        check_net_model(variant_name(module), module.in_channels, module.num_classes)


def check_compression_arguments(args: argparse.Namespace, images: Sequence[str] = ()) -> None:
    """ValueError for argument combinations no compression can run; `files.OutputPathError` for an
    --output named for another format or that is one of the inputs (the weights, `images`)."""
    if args.density is not None and not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density must be in (0, 1], got {args.density}")
    if args.density_plan == "sensitivity" and args.density is None:
        raise ValueError("--density-plan sensitivity spreads --density over the layers: give --density")
    if args.format == "net" and args.bits != 8:
        raise ValueError(f"the .net format holds 8-bit shared weights, got --bits {args.bits}")
    files.check_suffix(args.output, FORMAT_SUFFIXES[args.format], args.format)
    files.check_output_is_not_input(args.output, *source_paths(args.weights), *images)


def run(args: argparse.Namespace, overrides: Sequence[str] = ()) -> str:
    """Compress as the command line says; the summary to print."""
    if args.retrain_workdir is not None or args.config is not None or overrides:
        raise ValueError(RETRAINING_MOVED)
    check_compression_arguments(args, args.images or ())
    if args.density_plan == "sensitivity" and not args.images:
        raise ValueError("--density-plan sensitivity measures each layer on images: give --images "
                         "(or retrain with python -m train.compress, which measures them on the training data)")  # fmt: skip
    if args.weight_rounding == "adaround" and not args.images:
        raise ValueError("--weight-rounding adaround fits each layer on images: give --images")
    module, variables = load_pretrained(args.weights)
    check_format_holds(module, args.format)
    images = _sample_images(args.images, module, args.weights)
    convention = "caffe_bgr" if args.format == "net" else None
    density, plan = args.density, None
    if args.density_plan == "sensitivity":
        density, plan = None, sensitivity_densities(module, variables["params"], images, args.density, progress=True)
    compressed = compress(args.weights, bits=args.bits, density=density, layer_densities=plan,
                          input_convention=convention, weight_rounding=args.weight_rounding,
                          images=images if args.images else None, progress=True)  # fmt: skip
    path = save_compressed(compressed, args.output, format=args.format)
    params = compressed.params()
    change = largest_logit_change(module, variables, params, images)
    float_bytes = 4 * count_params(params)
    size = path.stat().st_size
    kept = kernel_density(params)
    where = f"{len(images)} images" if args.images else f"{len(images)} random inputs"
    where += " (the calibration images)" if args.weight_rounding == "adaround" else ""
    summary = (f"wrote {path}: {size:,} bytes ({float_bytes / size:.1f}x smaller than float32's {float_bytes:,}); "
               f"{kept:.1%} of conv weights kept, {args.bits}-bit shared; "
               f"largest logit change on {where}: {change:.3g}")  # fmt: skip
    return summary if plan is None else f"{describe_plan(plan)}\n{summary}"


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_with_config_overrides(build_parser(), argv)
    try:
        print(run(args, overrides))
    except COMMAND_ERRORS as error:
        return report_error(PROG, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
