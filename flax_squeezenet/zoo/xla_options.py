"""XLA compiler options under which SqueezeNet runs faster: `jax.jit(f, compiler_options=...)`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

# Speed (XLA:CPU, jaxlib 0.10): by default XLA hands float32 matrix products and convolutions to
# YNNPACK and emits reductions itself. These options keep YNNPACK for matrix products (the 1x1
# convolutions), give it the reductions too (the bias gradients and the global average pool, which
# XLA's own loops summed at about 5 GB/s), and send the 3x3 and stem convolutions to XLA's Eigen
# kernels. On a 2-core Zen 4, A/B in one process, the train step ran 1.25x (squeezenet1_1) and
# 1.56x (squeezenet1_0) faster at 224 pixels, batch 32, and 1.19x on the 64-pixel Fashion-MNIST
# preset's batches; see BENCHMARKS.md for inference. Other libraries compute the same operations:
# tests/test_speed_equivalence.py checks logits and gradients against XLA's defaults. In bfloat16
# YNNPACK's convolutions were the faster ones, so there the defaults stay. LLVM's optimisation
# level 1 for XLA's own loops compiled the squeezenet1_0 train step 15% faster (3.2 s against
# 3.8 s, three pairs of fresh processes) with no change in its speed (A/B, 23.9 vs 23.3 img/s).
_CPU_FLOAT32_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
    "xla_backend_optimization_level": "1",
}


@functools.cache
def _jaxlib_accepts_cpu_options() -> bool:
    """Whether this jaxlib knows the options (an unknown option name or value fails to compile)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=_CPU_FLOAT32_OPTIONS).lower(jnp.zeros(())).compile()
    except Exception:  # noqa: BLE001 - jaxlib raises its own error types for unknown options
        return False
    return True


def compiler_options(dtype: Any = jnp.float32) -> dict[str, str]:
    """Options for `jax.jit(..., compiler_options=...)` that speed up SqueezeNet computing in
    `dtype` on JAX's default backend; empty where the defaults are the fastest measured, or where
    this jaxlib does not know the options. They change which kernels run, not the results."""
    if jax.default_backend() != "cpu" or jnp.dtype(dtype) != jnp.float32:
        return {}
    return dict(_CPU_FLOAT32_OPTIONS) if _jaxlib_accepts_cpu_options() else {}
