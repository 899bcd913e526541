"""Stage descriptions: the sequence of stem convolution, Fire modules and pools a variant is made of.

A description says only what the paper's tables say (filter counts, kernel sizes, where the pools
are); `flax_squeezenet.zoo.layers.layer_plan` turns it into named layers with their channels.
"""

from __future__ import annotations

import dataclasses
from typing import Union


@dataclasses.dataclass(frozen=True)
class ConvStage:
    """A convolution followed by ReLU, no padding (the paper's conv1, the stem)."""

    features: int
    kernel: int
    stride: int


@dataclasses.dataclass(frozen=True)
class FireStage:
    """A Fire module's filter counts: s1x1, e1x1 and e3x3 in the paper's notation."""

    squeeze: int
    expand1x1: int
    expand3x3: int

    @property
    def features(self) -> int:
        return self.expand1x1 + self.expand3x3


@dataclasses.dataclass(frozen=True)
class PoolStage:
    """3x3 max-pooling with stride 2 and ceil-mode output size, as torchvision and Caffe pool."""


Stage = Union[ConvStage, FireStage, PoolStage]

POOL = PoolStage()

V1_0: tuple[Stage, ...] = (
    ConvStage(96, 7, 2), POOL,
    FireStage(16, 64, 64), FireStage(16, 64, 64), FireStage(32, 128, 128), POOL,
    FireStage(32, 128, 128), FireStage(48, 192, 192), FireStage(48, 192, 192), FireStage(64, 256, 256), POOL,
    FireStage(64, 256, 256),
)  # fmt: skip

V1_1: tuple[Stage, ...] = (
    ConvStage(64, 3, 2), POOL,
    FireStage(16, 64, 64), FireStage(16, 64, 64), POOL,
    FireStage(32, 128, 128), FireStage(32, 128, 128), POOL,
    FireStage(48, 192, 192), FireStage(48, 192, 192), FireStage(64, 256, 256), FireStage(64, 256, 256),
)  # fmt: skip


def metaparameter_stages(
    base_e: int = 128,
    incr_e: int = 128,
    pct3x3: float = 0.5,
    freq: int = 2,
    sr: float = 0.125,
    num_fire: int = 8,
) -> tuple[Stage, ...]:
    """The paper's Section 5 design space on the v1.0 macro-architecture; defaults give v1.0.

    Fire module i (from 0) has e_i = base_e + incr_e * floor(i / freq) expand filters, of which
    a fraction pct3x3 are 3x3, and sr * e_i squeeze filters.
    """
    if base_e < 1 or incr_e < 0 or freq < 1 or num_fire < 1:
        raise ValueError(
            "expected base_e >= 1, incr_e >= 0, freq >= 1 and num_fire >= 1, got "
            f"base_e={base_e}, incr_e={incr_e}, freq={freq}, num_fire={num_fire}"
        )
    if not 0.0 < pct3x3 < 1.0:
        raise ValueError(f"expected 0 < pct3x3 < 1, got {pct3x3}")
    if not 0.0 < sr <= 1.0:
        raise ValueError(f"expected 0 < sr <= 1, got {sr}")
    fires = []
    for i in range(num_fire):
        e = base_e + incr_e * (i // freq)
        e3x3 = max(1, round(e * pct3x3))
        e1x1 = max(1, e - e3x3)
        fires.append(FireStage(max(1, round(sr * e)), e1x1, e3x3))
    # v1.0 pools after conv1, fire4 and fire8: after the 3rd and the 7th Fire module.
    stages: list[Stage] = [ConvStage(96, 7, 2), POOL]
    for i, fire in enumerate(fires):
        stages.append(fire)
        if i in (2, 6) and i != num_fire - 1:
            stages.append(POOL)
    return tuple(stages)
