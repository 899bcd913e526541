"""Relative sparse indices, as Deep Compression stores them (Han et al. 2016, Section 2).

The positions of a kernel's kept weights (row-major flat order) are stored as the gap to the
previous stored entry in 4 bits. A gap longer than 15 is bridged by filler entries: a filler sits
15 positions after the previous entry and stores the value zero.
"""

from __future__ import annotations

import numpy as np

GAP_BITS = 4
MAX_GAP = 2**GAP_BITS - 1


def encode_positions(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gaps uint8, is_filler bool) of the stored entries reaching the increasing `positions`."""
    positions = np.asarray(positions, np.int64)
    if positions.size and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
        raise ValueError("positions must be non-negative and strictly increasing")
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps // (MAX_GAP + 1)
    entries = fillers + 1
    kept_slot = np.cumsum(entries) - 1
    stored_gaps = np.full(int(entries.sum()), MAX_GAP, np.uint8)
    stored_gaps[kept_slot] = gaps % (MAX_GAP + 1)
    is_filler = np.ones(stored_gaps.size, bool)
    is_filler[kept_slot] = False
    return stored_gaps, is_filler


def decode_positions(gaps: np.ndarray, size: int) -> np.ndarray:
    """The flat positions (int64) of the stored entries with these gaps, checked to lie below `size`."""
    positions = np.cumsum(np.asarray(gaps, np.int64) + 1) - 1
    if positions.size and positions[-1] >= size:
        raise ValueError(f"stored entries run past the end of a kernel of {size} weights")
    return positions
