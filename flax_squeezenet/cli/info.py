"""`squeezenet-info [--model NAME] [--image-size PIXELS]`: print a SqueezeNet's per-layer table.

Needs no weights and no network: the table comes from the architecture alone (see `summary`).
A model or input that does not fit prints one line on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flax_squeezenet.zoo.models import MODELS, create_model
from flax_squeezenet.zoo.summary import summary

PROG = "squeezenet-info"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Print a SqueezeNet's layers: output shape, parameters and XLA FLOPs, with totals."
    )
    parser.add_argument("--model", default="squeezenet1_1", help=f"the variant ({', '.join(MODELS)}; default squeezenet1_1)")
    parser.add_argument("--num-classes", type=int, default=1000, metavar="N", help="classifier outputs (default 1000)")
    parser.add_argument("--in-channels", type=int, default=3, metavar="C", help="input channels (default 3)")
    parser.add_argument("--classifier-padding", type=int, default=0, metavar="P",
                        help="zero padding of the classifier conv (default 0; Caffe's, the paper's: 1)")  # fmt: skip
    parser.add_argument("--image-size", type=int, default=224, metavar="PIXELS", help="input height and width (default 224)")
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="images per batch (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = create_model(
            args.model, num_classes=args.num_classes, in_channels=args.in_channels, classifier_padding=args.classifier_padding
        )
        summary(model, (args.batch_size, args.image_size, args.image_size, args.in_channels))
    except ValueError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
