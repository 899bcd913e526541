"""`python -m train.evaluate --workdir DIR [--split test] [--step best|latest|N]`

Top-1 / top-5 (and mean loss) of a run's checkpoint on a split, printed as one JSON line. The run's
config is read from DIR/config.json; by default the best checkpoint by eval top-1 is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional

import flax_squeezenet

from train import input_pipeline, parallel, steps, trainer


def evaluate_checkpoint(workdir: str, split: Optional[str] = None, step: str = "best") -> dict:
    """{"step", "split", "loss", "top1", "top5"...} of the checkpoint `step` in `workdir` on `split`."""
    config = trainer.read_config(workdir)
    if split:
        config.eval_split = split
    mesh = parallel.create_mesh()
    state, chosen = trainer.restore_saved_state(config, workdir, step, mesh)
    eval_step = parallel.jit_eval_step(steps.eval_step, mesh, flax_squeezenet.compiler_options(config.dtype))
    metrics = trainer.evaluate(state, config, mesh, eval_step)
    return {"step": chosen, "split": input_pipeline.get_data_config(config).source.eval_split, **metrics}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the run's eval split)")
    parser.add_argument("--step", default="best", help="'best' (default), 'latest' or a saved step number")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        result = evaluate_checkpoint(args.workdir, args.split, args.step)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
