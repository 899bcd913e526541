"""SIGTERM and SIGINT during training: finish the step, save a checkpoint, stop."""

from __future__ import annotations

import logging
import signal
from typing import Optional

import jax
import numpy as np

logger = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; a checkpoint of the step reached was saved."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved, "
                         "run the same command to resume")  # fmt: skip
        self.signum = signum
        self.step = step


class StopSignal:
    """Records SIGTERM/SIGINT so the loop can save and stop between steps; a second SIGINT kills."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def requested(self, step: int, every: int) -> bool:
        """Whether a stop was requested, in any process; processes agree only every `every` steps."""
        if jax.process_count() == 1:
            return self.signum is not None
        if step % every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        if self.signum is None and np.any(flags):
            self.signum = int(np.max(flags))
        return self.signum is not None

    def __exit__(self, *exc) -> bool:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False
