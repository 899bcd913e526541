"""`python -m train.export --workdir DIR [--step best|latest|N] [--output DIR/export]`

Writes a run's checkpoint as a `flax_squeezenet.save_pretrained` directory, which
`flax_squeezenet.load_pretrained(path)` reads. Training exports its final state by itself in
single-process runs; this command exports any saved step, and multi-process runs (run it in one
process once training is done).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import Optional

from train import input_pipeline, parallel, trainer


def export_checkpoint(workdir: str, step: str = "best", output: Optional[str] = None) -> pathlib.Path:
    """Export checkpoint `step` ("best", "latest" or a number) of the run in `workdir`; returns the directory."""
    config = trainer.read_config(workdir)
    state, _ = trainer.restore_saved_state(config, workdir, step, parallel.create_mesh())
    output = output or config.export_dir or f"{workdir}/{trainer.EXPORT_DIR}"
    return trainer.export(state, config, input_pipeline.dataset_info(config), output)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[1])
    parser.add_argument("--workdir", required=True, help="the training run's directory")
    parser.add_argument("--step", default="best", help="'best' (default: best eval top-1), 'latest' or a saved step")
    parser.add_argument("--output", default=None, help="export directory (default: the run's export_dir or DIR/export)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        path = export_checkpoint(args.workdir, args.step, args.output)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
