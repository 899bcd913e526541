"""`python -m train.evaluate --workdir DIR [--split test] [--step best|latest|N]`

Top-1 / top-5 (and mean loss) of a run's checkpoint on a split, printed as one JSON line. The run is
rebuilt from DIR/config.json (the weights it was started from are not read); by default the best
checkpoint by eval top-1 is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Optional

import jax
import numpy as np

import flax_squeezenet
from flax_squeezenet.compression import pruning
from train import averaging, input_pipeline, parallel, steps
from train import run as run_lib
from train import workdir as workdir_lib
from train.state import TrainState


def evaluate(run: run_lib.Run, state: TrainState, eval_step: Callable) -> dict[str, float]:
    """Mean loss, top-1 and top-5 of `state`'s model (`averaging.model_params`) over the run's eval
    split (all processes' shares); with pruning on, also `density`: the fraction of its conv weights not zero."""
    state = state.replace(params=averaging.model_params(state))
    totals: dict[str, float] = {}
    for batch in input_pipeline.create_eval_batches(run.data, process_index=jax.process_index(),
                                                    process_count=jax.process_count()):  # fmt: skip
        sums = jax.device_get(eval_step(state, parallel.make_global_batch(batch, run.mesh)))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = totals.pop("count")
    metrics = {k: v / count for k, v in totals.items()}
    if run.config.prune_density is not None:
        metrics["density"] = pruning.kernel_density(state.params)
    return metrics


def _logits(state: TrainState, batch: dict) -> jax.Array:
    return state.apply_fn({"params": state.params}, batch["image"], train=False)


def predict(run: run_lib.Run, state: TrainState) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of every example of the run's eval split, in its order (one process)."""
    state = state.replace(params=averaging.model_params(state))
    logits_fn = parallel.jit_eval_step(_logits, run.mesh, flax_squeezenet.compiler_options(run.config.dtype))
    labels, predicted = [], []
    for batch in input_pipeline.create_eval_batches(run.data):
        mask = np.asarray(batch["mask"])
        logits = np.asarray(jax.device_get(logits_fn(state, parallel.make_global_batch(batch, run.mesh))))
        labels.append(np.asarray(batch["label"])[mask])
        predicted.append(logits.argmax(-1)[mask])
    return np.concatenate(labels), np.concatenate(predicted)


def evaluate_checkpoint(workdir: str, split: Optional[str] = None, step: str = "best") -> dict:
    """{"step", "split", "loss", "top1", "top5"...} of the checkpoint `step` in `workdir` on `split`."""
    config = workdir_lib.read_config(workdir)
    if split:
        config.eval_split = split
    run = run_lib.build_run(config, workdir)
    state, chosen = run_lib.restore_state(run, step)
    eval_step = parallel.jit_eval_step(steps.eval_step, run.mesh, flax_squeezenet.compiler_options(config.dtype))
    return {"step": chosen, "split": run.data.settings.source.eval_split, **evaluate(run, state, eval_step)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[1])
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the run's eval split)")
    parser.add_argument("--step", default="best", help="'best' (default), 'latest' or a saved step number")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        result = evaluate_checkpoint(args.workdir, args.split, args.step)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
