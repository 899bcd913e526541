"""`python -m train --workdir DIR --config PRESET_OR_FILE [--config.key=value ...]`

Trains (or resumes, if DIR holds checkpoints) and exports the trained model to DIR/export.
Presets: fashion_mnist (default), cifar10, imagenet; or the path of a file with get_config().
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from train import configs

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and the export (resumes if it has checkpoints).")
config_flags.DEFINE_config_file("config", None, "A preset (" + ", ".join(configs.PRESETS) + ") or a config .py file.", lock_config=True)
flags.mark_flags_as_required(["workdir"])


def resolve_config_flag(argv: list[str]) -> list[str]:
    """argv with `--config NAME` / `--config=NAME` turned into the preset's file path (default: fashion_mnist)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = str(configs.resolve_config_path(argv[i + 1]))
            return argv
        if arg.startswith("--config="):
            argv[i] = "--config=" + str(configs.resolve_config_path(arg.split("=", 1)[1]))
            return argv
    return [argv[0], "--config=" + str(configs.resolve_config_path("fashion_mnist")), *argv[1:]]


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from train import trainer
    from train.data.sources import UnreadableImageError

    try:
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except trainer.TrainingInterrupted as interrupted:
        logging.warning("%s", interrupted)
        return 128 + interrupted.signum
    except trainer.NonFiniteLossError as error:
        logging.error("%s", error)
        return 1
    except (ValueError, FileNotFoundError, UnreadableImageError) as error:  # bad config or data: the message says what
        logging.error("%s: %s", type(error).__name__, error)
        return 2
    evaluation = result["eval"]
    summary = ", ".join(f"{k} {v:.4f}" for k, v in evaluation.items())
    print(f"done: step {result['step']}; eval {summary}; exported to {result['export']}")
    return 0


def run() -> None:
    try:
        argv = resolve_config_flag(sys.argv)
    except ValueError as error:
        sys.exit(f"error: {error}")
    app.run(main, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    remaining = FLAGS(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.getLogger("train").setLevel(logging.INFO)
    return remaining


if __name__ == "__main__":
    run()
