"""`python -m train.compress WEIGHTS --output FILE --workdir DIR --config PRESET [--config.key=value ...]`:
Deep Compression with retraining: prune -> retrain (a run in DIR/prune) -> share -> fine-tune the
shared values (a run in DIR/share) -> the `.sqz` (or `.net`) file, printing each stage's eval top-1
and size.

Each stage is a `python -m train` run in its own workdir on the data of the training config, so
running the same command again resumes the stage it stopped in and reuses the finished ones. It takes
`squeezenet-compress`'s pruning, sharing and format arguments; errors print one line and exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from flax_squeezenet.cli import compress as compress_cli
from flax_squeezenet.cli.common import COMMAND_ERRORS, parse_with_config_overrides, report_error
from flax_squeezenet.compression import sensitivity
from flax_squeezenet.compression.api import compress, encoded_size, save_compressed
from flax_squeezenet.compression.pruning import kernel_density
from flax_squeezenet.storage import files
from flax_squeezenet.weights import pretrained
from flax_squeezenet.weights.compressed import CompressedModel
from flax_squeezenet.zoo.models import count_params
from train import configs, evaluate, input_pipeline, run, trainer
from train.signals import TrainingInterrupted

PROG = "python -m train.compress"
PRUNE_STAGE = "prune"
SHARE_STAGE = "share"
SENSITIVITY_IMAGES = 1024
PLAN_JSON = "sensitivity_plan.json"


class PipelineInterrupted(Exception):
    """SIGTERM or SIGINT stopped a stage's training; its checkpoint was saved, a rerun resumes."""

    def __init__(self, stage: str, signum: int, message: str):
        super().__init__(f"{stage} stage {message}")
        self.signum = signum


@dataclasses.dataclass(frozen=True)
class Stage:
    """A training run of the pipeline: its name, config and workdir."""

    name: str
    config: Any  # ml_collections.ConfigDict
    workdir: pathlib.Path


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a finished stage left: its saved model and its eval top-1 (the run's final weights)."""

    name: str
    model: pathlib.Path
    top1: float


def training_config(preset: str, overrides: Sequence[str] = ()) -> Any:
    """The config `python -m train --config PRESET OVERRIDES...` runs (`--config.key=value` each);
    ValueError naming an unknown key or a bad value."""
    argv = [PROG, f"--config={configs.config_file(preset)}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "training config", flag_values=values, sys_argv=argv)
    try:
        values(argv)
        return values.config
    except (KeyError, AttributeError) as error:
        key = str(error).strip("\"' ")
        raise ValueError(f"unknown config key {key!r} (--config.{key}): expected a key of train/configs/default.py") from None
    except (flags.Error, TypeError) as error:
        raise ValueError(str(error).strip().splitlines()[-1]) from None


def pipeline_stages(
    config: Any, weights: str | os.PathLike, workdir: str | os.PathLike, *, density: float | None,
    bits: int, layer_bits: Mapping[str, int] | None = None, layer_densities: Mapping[str, float] | None = None,
) -> list[Stage]:  # fmt: skip
    """The runs that compress `weights` on `config`'s data: a pruning run from `weights` when
    `density` or `config.prune_density` is set (`density` overrides it; `layer_densities`, e.g. a
    `sensitivity_plan`, sets layers that `config.prune_layer_densities` does not), then the
    weight-sharing run from the previous model with `share_bits=bits` and `share_layer_bits=layer_bits`.
    Each run saves its model in its own workdir. `config` is not modified."""
    root = pathlib.Path(workdir)
    stages = []
    source = str(weights)
    if density is not None or config.get("prune_density") is not None:
        prune = ml_collections.ConfigDict(config.to_dict())
        prune.init_from, prune.model_dir = source, None
        if density is not None:
            prune.prune_density = density
        prune.prune_layer_densities = {**(layer_densities or {}), **config.prune_layer_densities.to_dict()}
        stages.append(Stage(PRUNE_STAGE, prune, root / PRUNE_STAGE))
        source = str(root / PRUNE_STAGE / "model")
    share = ml_collections.ConfigDict(config.to_dict())
    share.init_from, share.model_dir = source, None
    share.share_bits, share.share_layer_bits = bits, dict(layer_bits or {})
    if "prune_density" in share:
        share.prune_density, share.prune_layer_densities = None, {}  # the zeros stay zero through sharing
    stages.append(Stage(SHARE_STAGE, share, root / SHARE_STAGE))
    return stages


def sensitivity_plan(config: Any, weights: str | os.PathLike, density: float, num_images: int = SENSITIVITY_IMAGES,
                     progress: bool = False) -> dict[str, float]:  # fmt: skip
    """`sensitivity.sensitivity_densities` of `weights` at `density` overall, measured on
    `num_images` of `config`'s train images (the data the pipeline retrains on)."""
    module, variables = pretrained.load_pretrained(weights)
    data = input_pipeline.open_data(config)
    images = input_pipeline.sample_train_images(data, min(num_images, data.info.num_train_examples))
    return sensitivity.sensitivity_densities(module, variables["params"], images, density, progress=progress)


def recorded_sensitivity_plan(workdir: str | os.PathLike, config: Any, weights: str | os.PathLike, density: float,
                              progress: bool = False) -> dict[str, float]:  # fmt: skip
    """`sensitivity_plan(config, weights, density)`, measured once per pipeline workdir: kept in
    WORKDIR/sensitivity_plan.json and read from there while `weights` and `density` are the same,
    so that running the pipeline again to resume does not measure it again."""
    path = pathlib.Path(workdir) / PLAN_JSON
    key = {"weights": str(weights), "density": density, "num_images": SENSITIVITY_IMAGES}
    try:
        recorded = json.loads(path.read_text())
        if {name: recorded.get(name) for name in key} == key:
            return {layer: float(value) for layer, value in recorded["plan"].items()}
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        pass  # no plan recorded, or not one this function wrote: measure it
    plan = sensitivity_plan(config, weights, density, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_file(path) as temporary:
        temporary.write_text(json.dumps({**key, "plan": plan}, indent=2) + "\n")
    return plan


def run_stage(stage: Stage) -> StageResult:
    """Train `stage` (resuming its workdir's checkpoints; a finished run is only evaluated).
    PipelineInterrupted when a signal stops the training."""
    try:
        result = trainer.train_and_evaluate(run.build_run(stage.config, stage.workdir))
    except TrainingInterrupted as interrupted:
        raise PipelineInterrupted(stage.name, interrupted.signum, str(interrupted)) from None
    metrics = result["eval"] or evaluate.evaluate_checkpoint(str(stage.workdir), step="latest")
    return StageResult(stage.name, pathlib.Path(result["model"]), float(metrics["top1"]))


def compress_with_retraining(
    weights: str | os.PathLike,
    workdir: str | os.PathLike,
    config: Any,
    *,
    bits: int = 8,
    layer_bits: Mapping[str, int] | None = None,
    density: float | None = None,
    layer_densities: Mapping[str, float] | None = None,
    input_convention: str | None = None,
) -> tuple[CompressedModel, list[StageResult]]:
    """Deep Compression of `weights` with retraining on the data of `config` (a training config,
    `ml_collections.ConfigDict`): the runs of `pipeline_stages` in `workdir`, then the fine-tuned
    shared weights as a `CompressedModel` (exactly the last run's weights: they hold at most
    2**bits - 1 distinct non-zero values per kernel). Also returns each stage's result. For a
    sensitivity plan: `density=1.0, layer_densities=sensitivity_plan(config, weights, overall)`.
    """
    stages = pipeline_stages(config, weights, workdir, density=density, bits=bits, layer_bits=layer_bits,
                             layer_densities=layer_densities)  # fmt: skip
    results = [run_stage(stage) for stage in stages]
    compressed = compress(results[-1].model, bits=bits, layer_bits=layer_bits, input_convention=input_convention)
    return compressed, results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Deep Compression with retraining: prune -> retrain -> "
                                     "share -> fine-tune the shared values, as python -m train runs.")  # fmt: skip
    compress_cli.add_compression_arguments(parser)
    parser.add_argument("--workdir", required=True, metavar="DIR",
                        help="the stages' runs go to DIR/prune and DIR/share (run again to resume)")  # fmt: skip
    parser.add_argument("--config", required=True, metavar="PRESET", help="a training preset or config .py file, "
                        "with --config.key=value overrides as python -m train takes them")  # fmt: skip
    return parser


def compress_and_report(args: argparse.Namespace, overrides: Sequence[str]) -> str:
    """Run the pipeline the command line describes, write the file; the summary to print."""
    compress_cli.check_compression_arguments(args)
    config = training_config(args.config, overrides)
    folder = pathlib.Path(args.output).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write --output {args.output}: {folder} is not a writable directory")
    compress_cli.check_format_holds(pretrained.load_pretrained(args.weights)[0], args.format)
    convention = "caffe_bgr" if args.format == "net" else None
    density, plan = args.density, None
    if args.density_plan == "sensitivity":
        density, plan = 1.0, recorded_sensitivity_plan(args.workdir, config, args.weights, args.density, progress=True)
    compressed, stages = compress_with_retraining(args.weights, args.workdir, config, bits=args.bits, density=density,
                                                  layer_densities=plan, input_convention=convention)  # fmt: skip
    path = save_compressed(compressed, args.output, format=args.format)
    float_bytes = 4 * count_params(compressed.params())
    lines = [f"{args.weights}: {float_bytes:,} bytes as float32"]
    if plan is not None:
        lines.append(compress_cli.describe_plan(plan))
    for stage in stages:
        params = pretrained.load_pretrained(stage.model)[1]["params"]
        shared_size = encoded_size(compress(stage.model, bits=args.bits, input_convention=convention), args.format)
        lines.append(f"{stage.name}: {stage.model}: eval top-1 {stage.top1:.4f}, {kernel_density(params):.1%} of "
                     f"conv weights kept, {shared_size:,} bytes {args.bits}-bit shared")  # fmt: skip
    size = path.stat().st_size
    lines.append(f"wrote {path}: {size:,} bytes ({float_bytes / size:.1f}x smaller than float32's {float_bytes:,})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_with_config_overrides(build_parser(), argv)
    try:
        print(compress_and_report(args, overrides))
    except PipelineInterrupted as interrupted:
        print(f"{PROG}: {interrupted}", file=sys.stderr)
        return 128 + interrupted.signum
    except COMMAND_ERRORS as error:
        return report_error(PROG, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
