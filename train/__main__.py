"""`python -m train --workdir DIR [--config PRESET | FILE.py[:ARG]] [--config.key=value ...]`

Trains (or resumes, if DIR holds checkpoints) and saves the trained model to DIR/model.
Presets: fashion_mnist (the default: train/configs/default.py), cifar10, imagenet; or a config file
with get_config(), as ml_collections takes it.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from train import configs

FLAGS = flags.FLAGS


class PresetOrFileParser(ConfigFileFlagParser):
    """ml_collections' config-file flag parser that also takes a preset name (see `train.configs.config_file`)."""

    def parse(self, path: str):
        return super().parse(configs.config_file(path))


flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the saved model (resumes if it has checkpoints).")
config_flags.DEFINE_config_file("config", None, "A preset (" + ", ".join(configs.PRESETS) + ") or a config .py file[:arg].", lock_config=True)
FLAGS["config"].parser = PresetOrFileParser(name="config", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from train import checkpoints, run, trainer
    from train.data.sources import UnreadableImageError
    from train.signals import TrainingInterrupted

    try:
        result = trainer.train_and_evaluate(run.build_run(FLAGS.config, FLAGS.workdir))
    except TrainingInterrupted as interrupted:
        logging.warning("%s", interrupted)
        return 128 + interrupted.signum
    except trainer.NonFiniteLossError as error:
        logging.error("%s", error)
        return 1
    except (ValueError, OSError, UnreadableImageError, checkpoints.UnreadableCheckpointError) as error:
        logging.error("%s: %s", type(error).__name__, error)  # a bad config, workdir or data: the message says what
        return 2
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result["eval"].items())
    print(f"done: step {result['step']}; eval {summary}; model saved to {result['model']}")
    report = result["report"]
    if report is not None:
        print(report["table"])
        print(f"held-out top-1 {100 * report['top1']:.2f}% ({report['count']} photos) of the saved model")
        print(f"report (per-class CSV, confusion matrix, wrong photos) in {report['directory']}")
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad flag (unknown key, wrong type, unknown preset) reported in one line."""
    try:
        FLAGS.set_default("config", configs.DEFAULT_PRESET)  # parses the overrides when --config is absent
        remaining = FLAGS(argv)
        FLAGS.config  # noqa: B018 - loads the config file and applies the overrides now, inside this try
    except (KeyError, AttributeError) as error:  # ml_collections' report of an override of no key
        key = str(error).strip("\"' ")
        sys.exit(f"error: unknown config key {key!r} (--config.{key}): expected a key of train/configs/default.py")
    except (flags.Error, ValueError, TypeError) as error:
        sys.exit(f"error: {str(error).strip().splitlines()[-1]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.getLogger("train").setLevel(logging.INFO)
    return remaining


def run() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
