"""SqueezeNet as native Flax NNX modules, and NNX weights from any source `load_pretrained` reads.

The modules (`flax_squeezenet.zoo.nnx`) hold their parameters as the linen ones do, so `to_nnx` and
`to_linen` copy a parameter tree; dropout is active after `model.train()`, off after `model.eval()`.

    from flax import nnx
    import flax_squeezenet.nnx as fsq_nnx
    model = fsq_nnx.load_pretrained("squeezenet1_1")          # ready, in eval mode
    logits = nnx.jit(lambda m, x: m(x))(model, images)
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from flax_squeezenet.weights import pretrained
from flax_squeezenet.zoo.nnx import (
    FireModule,
    SqueezeNet,
    squeezenet1_0,
    squeezenet1_0_complex_bypass,
    squeezenet1_0_simple_bypass,
    squeezenet1_1,
    to_linen,
    to_nnx,
)

__all__ = [
    "FireModule",
    "SqueezeNet",
    "load_pretrained",
    "squeezenet1_0",
    "squeezenet1_0_complex_bypass",
    "squeezenet1_0_simple_bypass",
    "squeezenet1_1",
    "to_linen",
    "to_nnx",
]


def load_pretrained(name_or_path: Any, *, rngs: nnx.Rngs | None = None, **options: Any) -> SqueezeNet:
    """The NNX module, in eval mode, from any source `flax_squeezenet.load_pretrained` reads.

    `options` are that function's (model, num_classes, rng, cache_dir, dtype, ...); `rngs` drives
    the module's dropout once in train mode (default `nnx.Rngs(0)`).
    """
    module, variables = pretrained.load_pretrained(name_or_path, **options)
    model = to_nnx(module, variables, rngs=rngs)
    model.eval()
    return model
