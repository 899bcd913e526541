"""Deep Compression with retraining, through the training program (`train/`, run from the checkout):
prune -> retrain (a run in WORKDIR/prune) -> share -> fine-tune the shared values (a run in
WORKDIR/share) -> the `CompressedModel` to encode.

Each stage is a `python -m train` run in its own workdir, so running the pipeline again on the same
workdir resumes the stage it stopped in and reuses the finished ones.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from flax_squeezenet import files, pretrained
from flax_squeezenet.compression import sensitivity
from flax_squeezenet.compression.api import compress
from flax_squeezenet.compression.compressed import CompressedModel

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


def _checkout_on_path() -> None:
    """Put the current directory on the Python path when it is a checkout whose `train/` is not
    importable otherwise, as `python -m` does: the `squeezenet-compress` script's path holds only
    its own folder (tests/test_compression_retrain.py::test_the_console_script_finds_the_checkouts_training_program)."""
    if importlib.util.find_spec("train") is None and (pathlib.Path.cwd() / "train" / "trainer.py").is_file():
        sys.path.insert(0, os.getcwd())


def _training_program():
    _checkout_on_path()
    try:
        import ml_collections
        from train import evaluate, run, trainer
    except ImportError as error:
        raise ImportError(
            "retraining needs the training program: run squeezenet-compress from the root of a "
            f"flax-squeezenet checkout (train/ on the Python path), [train] extra installed ({error})"
        ) from None
    return ml_collections, run, trainer, evaluate


def training_config(preset: str, overrides: Sequence[str] = ()) -> Any:
    """The config `python -m train --config PRESET OVERRIDES...` runs (`--config.key=value` each);
    ValueError naming an unknown key or a bad value."""
    _training_program()
    from absl import flags
    from ml_collections import config_flags

    from train import configs

    argv = ["squeezenet-compress", f"--config={configs.config_file(preset)}", *overrides]
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
    ml_collections = _training_program()[0]
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
    from train import input_pipeline

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
    _, run, trainer, evaluate = _training_program()
    from train.signals import TrainingInterrupted

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
