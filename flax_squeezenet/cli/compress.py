"""`squeezenet-compress WEIGHTS --output FILE`: Deep Compression without retraining.

Prunes by magnitude (with --density), shares weights (--bits per weight), Huffman-codes the
result into a `.sqz` file (`load_pretrained` reads it) or writes the paper's `.net` format, then
prints the sizes and the largest logit change. Errors the user can fix print one line on stderr
and exit with status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import jax
import numpy as np

from flax_squeezenet.compression import FORMATS, compress, save_compressed
from flax_squeezenet.compression.api import variant_name
from flax_squeezenet.compression.netfile import check_net_model
from flax_squeezenet.download import DownloadError
from flax_squeezenet.models import count_params
from flax_squeezenet.preprocess import preprocess
from flax_squeezenet.pretrained import load_pretrained
from flax_squeezenet.xla_options import compiler_options

PROG = "squeezenet-compress"
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
        "--density", type=float, metavar="D", help="fraction of each conv's weights to keep (default: no pruning)"
    )
    parser.add_argument("--bits", type=int, default=8, metavar="B", help="bits per shared weight, 1 to 8 (default 8)")
    parser.add_argument(
        "--format", choices=FORMATS, default="squeezenet",
        help="squeezenet: a .sqz file load_pretrained reads (default); "
        "net: the paper's .net file (v1.0, 1000 classes, 8 bits)",
    )  # fmt: skip
    parser.add_argument(
        "--images", nargs="+", metavar="IMAGE",
        help=f"images to measure the logit change on (default: {RANDOM_IMAGES} random inputs)",
    )  # fmt: skip
    return parser


def _sample_images(paths: Sequence[str] | None, module) -> np.ndarray:
    if paths:
        return np.asarray(preprocess(list(paths)))
    return np.random.default_rng(0).standard_normal((RANDOM_IMAGES, 224, 224, module.in_channels)).astype(np.float32)


def largest_logit_change(module, variables, params, images: np.ndarray) -> float:
    """max |logits with `params` - logits with `variables`| of `module` over `images`."""
    apply = jax.jit(module.apply, compiler_options=compiler_options(module.dtype))
    return float(np.max(np.abs(np.asarray(apply({"params": params}, images)) - np.asarray(apply(variables, images)))))


def run(args: argparse.Namespace) -> str:
    """Compress as the command line says; the summary to print."""
    if args.density is not None and not 0.0 < args.density <= 1.0:
        raise ValueError(f"--density must be in (0, 1], got {args.density}")
    module, variables = load_pretrained(args.weights)
    images = _sample_images(args.images, module)
    if args.format == "net":
        check_net_model(variant_name(module), module.in_channels, module.num_classes)
        if args.bits != 8:
            raise ValueError(f"the .net format holds 8-bit shared weights, got --bits {args.bits}")
    convention = "caffe_bgr" if args.format == "net" else None
    compressed = compress(
        args.weights, bits=args.bits, density=args.density, input_convention=convention, progress=True
    )
    path = save_compressed(compressed, args.output, format=args.format)
    params = compressed.params()
    change = largest_logit_change(module, variables, params, images)
    float_bytes = 4 * count_params(params)
    size = path.stat().st_size
    kernels = [leaf for leaf in jax.tree_util.tree_leaves(params) if leaf.ndim >= 2]
    kept = sum(int(np.count_nonzero(k)) for k in kernels) / sum(math.prod(k.shape) for k in kernels)
    where = f"{len(images)} images" if args.images else f"{len(images)} random inputs"
    return (f"wrote {path}: {size:,} bytes ({float_bytes / size:.1f}x smaller than float32's {float_bytes:,}); "
            f"{kept:.1%} of conv weights kept, {args.bits}-bit shared; "
            f"largest logit change on {where}: {change:.3g}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        print(run(args))
    except (OSError, ValueError, DownloadError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
