"""Deep Compression without retraining: size and top-1 of each stage on ImageNet photos.

Stages, each timed, sized and evaluated on the 750 labeled photos of ../shared/data/imagenet-photos
(top-1 against the photo's WordNet ID; torchvision's eval transform, 224 crop):
  the paper's v1.0 file (.net), re-encoded with Huffman (8-bit, lossless), re-clustered to 6 and
  4 bits + Huffman, and at 6 bits with its codebooks fine-tuned (`finetune.distill_codebooks`) to
  match the 8-bit model's logits on the 250 photos without an ImageNet-1k label, and at 6 bits
  with each weight rounded to the shared value below or above it that keeps its layer's output on
  those photos closest (`weight_rounding="adaround"`); torchvision
  squeezenet1_1 (the ncnn copy) as float32, 8-bit shared (no pruning) and 6-bit shared + Huffman.
Sizes are the written files; float32 is 4 bytes a parameter.
The paper's model runs with this repository's v1.0 module as `load_pretrained` builds it for the
`.net` file (Caffe's input folded into conv1), so its accuracy depends on that module's semantics.

    python bench/compression_stages.py                      # about 20 minutes on 2 busy cores
    python bench/compression_stages.py --only distilled     # one stage
    python bench/compression_stages.py --limit 50           # a quick check of the script
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

from flax_squeezenet import compiler_options, count_params, load_pretrained
from flax_squeezenet.compression import compress, save_compressed
from flax_squeezenet.compression.finetune import distill_codebooks
from flax_squeezenet.weights import preprocess

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
PAPER = "pretrained/deepcompression_squeezenet1_0.net"
TORCHVISION = "pretrained/torchvision_squeezenet1_1.ncnn.param"
BATCH = 50


def unlabeled_photos(shared: pathlib.Path) -> list[pathlib.Path]:
    """The photos without an ImageNet-1k class (disjoint from the evaluation photos)."""
    wnids = set((shared / "data/imagenet_wnids.txt").read_text().split())
    return sorted(p for p in (shared / "data/imagenet-photos").iterdir() if p.name.split("_")[0] not in wnids)


def distilled(source: pathlib.Path, compressed, calibration: np.ndarray, epochs: int, learning_rate: float):
    """`compressed` with codebooks fine-tuned towards the source model's logits on `calibration`."""
    module, variables = load_pretrained(source)
    apply = jax.jit(module.apply, compiler_options=compiler_options(module.dtype))
    batches = range(0, len(calibration), BATCH)
    reference = np.concatenate([apply(variables, calibration[i : i + BATCH]) for i in batches])
    return distill_codebooks(module, compressed, reference, calibration, epochs=epochs,
                             learning_rate=learning_rate, progress=True)  # fmt: skip


def labeled_photos(shared: pathlib.Path, limit: int | None) -> tuple[list[pathlib.Path], np.ndarray]:
    """The photos whose WordNet ID is an ImageNet-1k class, and their class indices."""
    wnids = (shared / "data/imagenet_wnids.txt").read_text().split()
    index = {wnid: i for i, wnid in enumerate(wnids)}
    photos = sorted(p for p in (shared / "data/imagenet-photos").iterdir() if p.name.split("_")[0] in index)
    photos = photos[:limit]
    return photos, np.array([index[p.name.split("_")[0]] for p in photos])


def top1(module, variables, images: np.ndarray, labels: np.ndarray) -> float:
    apply = jax.jit(module.apply, compiler_options=compiler_options(module.dtype))
    batches = range(0, len(images), BATCH)
    predictions = np.concatenate([np.argmax(apply(variables, images[i : i + BATCH]), -1) for i in batches])
    return 100.0 * float(np.mean(predictions == labels))


def stages(shared: pathlib.Path):
    """(name, source file, compress kwargs or None for the source itself) of every stage."""
    paper, torchvision = shared / PAPER, shared / TORCHVISION
    return [
        ("paper v1.0 .net (pruned, 8-bit)", paper, None),
        ("paper v1.0, Huffman-coded (8-bit, lossless)", paper, {"bits": 8}),
        ("paper v1.0, re-clustered to 6 bits + Huffman", paper, {"bits": 6}),
        ("paper v1.0, re-clustered to 6 bits, codebooks distilled + Huffman", paper, {"bits": 6, "distill": True}),
        ("paper v1.0, re-clustered to 6 bits, adaptive rounding + Huffman", paper, {"bits": 6, "weight_rounding": "adaround"}),
        ("paper v1.0, re-clustered to 4 bits + Huffman", paper, {"bits": 4}),
        ("torchvision squeezenet1_1 (ncnn copy)", torchvision, None),
        ("squeezenet1_1, 8-bit shared + Huffman, no pruning", torchvision, {"bits": 8}),
        ("squeezenet1_1, 6-bit shared + Huffman, no pruning", torchvision, {"bits": 6}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=pathlib.Path, default=SHARED, help="the shared data folder (../shared)")
    parser.add_argument("--limit", type=int, help="evaluate on the first N labeled photos only")
    parser.add_argument("--only", metavar="TEXT", help="run only the stages whose name contains TEXT")
    parser.add_argument("--distill-epochs", type=int, default=2, help="epochs over the unlabeled photos (2)")
    parser.add_argument("--distill-learning-rate", type=float, default=1e-3, help="Adam's rate for the codebooks")
    args = parser.parse_args(argv)
    photos, labels = labeled_photos(args.shared, args.limit)
    start = time.perf_counter()
    images = np.asarray(preprocess(photos))
    print(f"{len(photos)} labeled photos preprocessed in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for index, (name, source, options) in enumerate(stages(args.shared)):
            if args.only and args.only not in name:
                continue
            seconds = 0.0
            path = source
            if options is not None:
                start = time.perf_counter()
                options = dict(options)
                distill = options.pop("distill", False)
                needs_photos = distill or "weight_rounding" in options
                calibration = np.asarray(preprocess(unlabeled_photos(args.shared))) if needs_photos else None
                compressed = compress(source, images=calibration, progress=True, **options)
                if distill:
                    compressed = distilled(source, compressed, calibration, args.distill_epochs,
                                           args.distill_learning_rate)  # fmt: skip
                path = save_compressed(compressed, pathlib.Path(workdir) / f"stage{index}.sqz")
                seconds = time.perf_counter() - start
            start = time.perf_counter()
            module, variables = load_pretrained(path)
            load_seconds = time.perf_counter() - start
            size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".param" else 0)
            float_bytes = 4 * count_params(variables)
            accuracy = top1(module, variables, images, labels)
            rows.append((name, size, float_bytes / size, accuracy, seconds, load_seconds))
            print(f"{name}: {size:,} bytes, top-1 {accuracy:.1f}%, compress {seconds:.1f} s, "
                  f"load {load_seconds:.1f} s", file=sys.stderr)  # fmt: skip
    print(f"| stage | bytes | vs float32 | top-1 ({len(photos)} photos) | compress s | load s |")
    print("|---|---|---|---|---|---|")
    for name, size, ratio, accuracy, seconds, load_seconds in rows:
        print(f"| {name} | {size:,} | {ratio:.1f}x | {accuracy:.1f}% | {seconds:.1f} | {load_seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
