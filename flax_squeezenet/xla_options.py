"""XLA compiler options under which SqueezeNet runs faster: `jax.jit(f, compiler_options=...)`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

# Speed (XLA:CPU, jaxlib 0.10): XLA hands float32 convolutions to YNNPACK by default. Restricting
# YNNPACK to matrix products (the 1x1 convolutions) sends the 3x3 and stem convolutions to XLA's
# Eigen kernels instead. On a 2-core Zen 4 (BENCHMARKS.md) that made float32 inference at 224 pixels
# 1.5x (v1.1) and 1.8x (v1.0) faster, and the train step 1.1-1.2x faster for v1.0 at 224 and for
# v1.1 on 64-pixel Fashion-MNIST batches, but 0.8-0.9x for v1.1 at 224 (not explained yet). It is
# the same convolution computed by another library:
# tests/test_speed_equivalence.py checks logits and gradients against XLA's defaults.
# In bfloat16 YNNPACK was the faster one, so there the defaults stay.
_CPU_FLOAT32_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def _compiles_with(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib accepts `options` (an unknown option name or value fails to compile)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
    except Exception:  # noqa: BLE001 - jaxlib raises its own error types for unknown options
        return False
    return True


def compiler_options(dtype: Any = jnp.float32) -> dict[str, str]:
    """Options for `jax.jit(..., compiler_options=...)` that speed up SqueezeNet computing in
    `dtype` on JAX's default backend; empty where the defaults are the fastest measured, or where
    this jaxlib does not know the options. They change which kernels run, not the results."""
    if jax.default_backend() != "cpu" or jnp.dtype(dtype) != jnp.float32:
        return {}
    options = tuple(sorted(_CPU_FLOAT32_OPTIONS.items()))
    return dict(options) if _compiles_with(options) else {}
