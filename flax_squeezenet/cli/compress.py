"""`squeezenet-compress WEIGHTS --output FILE [--retrain-workdir DIR --config PRESET [--config.key=value ...]]`:
Deep Compression.

Without --retrain-workdir: prunes by magnitude (with --density), shares weights (--bits per
weight), Huffman-codes the result into a `.sqz` file (`load_pretrained` reads it) or writes the
paper's `.net` format, then prints the sizes and the largest logit change. With it: prune ->
retrain -> share -> fine-tune the shared values, as `python -m train` runs on the data of the
training config (`flax_squeezenet.compression.retrain`; run from the checkout), then encode,
printing each stage's eval top-1 and size; run it again to resume. Errors the user can fix print
one line on stderr and exit with status 1; an --output that is one of the inputs, or whose suffix
is not --format's (.sqz, .net), is refused before any work with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
from collections.abc import Sequence

import jax
import numpy as np

from flax_squeezenet import files, pretrained
from flax_squeezenet.cli.common import USAGE_ERROR, USAGE_ERRORS
from flax_squeezenet.compression import FORMATS, compress, encoded_size, save_compressed
from flax_squeezenet.compression.api import FORMAT_SUFFIXES, variant_name
from flax_squeezenet.compression.netfile import check_net_model
from flax_squeezenet.compression.retrain import (
    PipelineInterrupted,
    compress_with_retraining,
    recorded_sensitivity_plan,
    training_config,
)
from flax_squeezenet.compression.sensitivity import sensitivity_densities
from flax_squeezenet.conventions import input_convention
from flax_squeezenet.download import DownloadError
from flax_squeezenet.models import count_params
from flax_squeezenet.pretrained import load_pretrained
from flax_squeezenet.rounding import WEIGHT_ROUNDINGS
from flax_squeezenet.xla_options import compiler_options

PROG = "squeezenet-compress"
DENSITY_PLANS = ("uniform", "sensitivity")
RANDOM_IMAGES = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compress SqueezeNet weights as Deep Compression does, without retraining: "
        "magnitude pruning, weight sharing (k-means), Huffman coding.",
    )
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
        "--weight-rounding", choices=WEIGHT_ROUNDINGS, default="nearest",
        help="nearest: each weight takes its nearest shared value (default); adaround: the value below or above "
        "it that keeps each layer's output on --images closest to the uncompressed model's, biases corrected "
        "(post-training only; slower)",
    )  # fmt: skip
    parser.add_argument(
        "--format", choices=FORMATS, default="squeezenet",
        help="squeezenet: a .sqz file load_pretrained reads (default); "
        "net: the paper's .net file (v1.0, 1000 classes, 8 bits)",
    )  # fmt: skip
    parser.add_argument(
        "--images", nargs="+", metavar="IMAGE",
        help=f"images to measure the logit change on, to measure --density-plan sensitivity and to fit "
        f"--weight-rounding adaround, prepared as the weights' own input convention says (default: "
        f"{RANDOM_IMAGES} random inputs)",
    )  # fmt: skip
    parser.add_argument(
        "--retrain-workdir", metavar="DIR",
        help="retrain: prune -> retrain -> share -> fine-tune as python -m train runs in DIR/prune and DIR/share "
        "(run again to resume); needs --config, and --config.key=value overrides as python -m train takes them",
    )  # fmt: skip
    parser.add_argument("--config", metavar="PRESET", help="with --retrain-workdir: a training preset or config .py file")
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


def _kept_fraction(params) -> float:
    kernels = [leaf for leaf in jax.tree_util.tree_leaves(params) if leaf.ndim >= 2]
    return sum(int(np.count_nonzero(k)) for k in kernels) / sum(math.prod(k.shape) for k in kernels)


def _describe_plan(plan: dict[str, float]) -> str:
    pruned = ", ".join(f"{layer} {density:g}" for layer, density in plan.items())
    return f"sensitivity plan (other convs kept whole): {pruned or 'nothing pruned'}"


def run_with_retraining(args: argparse.Namespace, overrides: Sequence[str]) -> str:
    """Run the retraining pipeline the command line describes; the summary to print."""
    config = training_config(args.config, overrides)
    folder = pathlib.Path(args.output).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write --output {args.output}: {folder} is not a writable directory")
    convention = "caffe_bgr" if args.format == "net" else None
    density, plan = args.density, None
    if args.density_plan == "sensitivity":
        density, plan = 1.0, recorded_sensitivity_plan(args.retrain_workdir, config, args.weights, args.density, progress=True)
    compressed, stages = compress_with_retraining(args.weights, args.retrain_workdir, config, bits=args.bits,
                                                  density=density, layer_densities=plan,
                                                  input_convention=convention)  # fmt: skip
    path = save_compressed(compressed, args.output, format=args.format)
    float_bytes = 4 * count_params(compressed.params())
    lines = [f"{args.weights}: {float_bytes:,} bytes as float32"]
    if plan is not None:
        lines.append(_describe_plan(plan))
    for stage in stages:
        params = load_pretrained(stage.model)[1]["params"]
        shared_size = encoded_size(compress(stage.model, bits=args.bits, input_convention=convention), args.format)
        lines.append(f"{stage.name}: {stage.model}: eval top-1 {stage.top1:.4f}, {_kept_fraction(params):.1%} of "
                     f"conv weights kept, {shared_size:,} bytes {args.bits}-bit shared")  # fmt: skip
    size = path.stat().st_size
    lines.append(f"wrote {path}: {size:,} bytes ({float_bytes / size:.1f}x smaller than float32's {float_bytes:,})")
    return "\n".join(lines)


def run(args: argparse.Namespace, overrides: Sequence[str] = ()) -> str:
    """Compress as the command line says; the summary to print."""
    if args.density is not None and not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density must be in (0, 1], got {args.density}")
    if (args.retrain_workdir is None) != (args.config is None):
        raise ValueError("--retrain-workdir and --config go together: retraining needs both")
    if overrides and args.retrain_workdir is None:
        raise ValueError(f"unexpected arguments {' '.join(overrides)}: --config.key=value needs --retrain-workdir")
    if args.density_plan == "sensitivity" and args.density is None:
        raise ValueError("--density-plan sensitivity spreads --density over the layers: give --density")
    if args.density_plan == "sensitivity" and not (args.images or args.retrain_workdir):
        raise ValueError("--density-plan sensitivity measures each layer on images: give --images, or --retrain-workdir")
    if args.weight_rounding == "adaround" and (args.retrain_workdir or not args.images):
        raise ValueError("--weight-rounding adaround fits each layer post-training on images: give --images, "
                         "without --retrain-workdir")  # fmt: skip
    files.check_suffix(args.output, FORMAT_SUFFIXES[args.format], args.format)
    files.check_output_is_not_input(args.output, *pretrained.source_paths(args.weights), *(args.images or []))
    if args.format == "net" and args.bits != 8:
        raise ValueError(f"the .net format holds 8-bit shared weights, got --bits {args.bits}")
    module, variables = load_pretrained(args.weights)
    if args.format == "net":
        check_net_model(variant_name(module), module.in_channels, module.num_classes)
    if args.retrain_workdir is not None:
        return run_with_retraining(args, overrides)
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
    kept = _kept_fraction(params)
    where = f"{len(images)} images" if args.images else f"{len(images)} random inputs"
    where += " (the calibration images)" if args.weight_rounding == "adaround" else ""
    summary = (f"wrote {path}: {size:,} bytes ({float_bytes / size:.1f}x smaller than float32's {float_bytes:,}); "
               f"{kept:.1%} of conv weights kept, {args.bits}-bit shared; "
               f"largest logit change on {where}: {change:.3g}")  # fmt: skip
    return summary if plan is None else f"{_describe_plan(plan)}\n{summary}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    unknown = [arg for arg in overrides if not arg.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        print(run(args, overrides))
    except PipelineInterrupted as interrupted:
        print(f"{PROG}: {interrupted}", file=sys.stderr)
        return 128 + interrupted.signum
    except USAGE_ERRORS as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except (OSError, ValueError, ImportError, DownloadError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
