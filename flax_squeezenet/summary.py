"""A per-layer table of a SqueezeNet, as Keras's `model.summary()`: output shape, parameters, FLOPs.

FLOPs are XLA's own count (`cost_analysis()["flops"]` of the compiled layer: a multiply-add is 2,
and each bias add, ReLU, max and average counts 1), so the layers add up to the cost analysis of
the whole model; tests/test_summary.py checks both totals. Nothing is initialised or run: shapes are
traced abstractly and each layer is only compiled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flax_squeezenet import models
from flax_squeezenet import nnx as fsq_nnx
from flax_squeezenet.stages import ConvStage as Conv, FireStage as Fire


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of the table."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


@dataclasses.dataclass(frozen=True)
class Summary:
    """The layers in network order; `str()` is the printed table."""

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    def __str__(self) -> str:
        header = ("layer", "type", "output shape", "params", "FLOPs")
        rows = [(layer.name, layer.kind, str(layer.output_shape), f"{layer.params:,}", f"{layer.flops:,}")
                for layer in self.layers]  # fmt: skip
        footer = ("total", f"input {self.input_shape}", "", f"{self.total_params:,}", f"{self.total_flops:,}")
        widths = [max(len(row[i]) for row in [header, *rows, footer]) for i in range(len(header))]

        def line(row: Sequence[str]) -> str:
            cells = [cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        rule = "-" * len(line(header))
        return "\n".join([line(header), rule, *map(line, rows), rule, line(footer)])


def _abstract_nnx(model: models.SqueezeNet | fsq_nnx.SqueezeNet) -> fsq_nnx.SqueezeNet:
    config = model.config if isinstance(model, fsq_nnx.SqueezeNet) else {
        name: getattr(model, name) for name in fsq_nnx.CONFIG_FIELDS
    }  # fmt: skip
    return nnx.eval_shape(lambda: fsq_nnx.SqueezeNet(**config, rngs=nnx.Rngs(0)))


def _cost(module: nnx.Module | None, apply: Callable, x: jax.ShapeDtypeStruct) -> tuple[jax.ShapeDtypeStruct, int, int]:
    """(output, parameter count, XLA FLOPs) of `apply(module, x)` compiled alone."""
    graphdef, state = nnx.split(module) if module is not None else (None, {})

    def run(state: Any, x: jax.Array) -> jax.Array:
        return apply(None if graphdef is None else nnx.merge(graphdef, state), x)

    output = jax.eval_shape(run, state, x)
    flops = jax.jit(run).lower(state, x).compile().cost_analysis()["flops"]
    params = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(state))
    return output, params, int(flops)


def _layers(model: fsq_nnx.SqueezeNet) -> list[tuple[str, str, nnx.Module | None, Callable]]:
    """(name, type, module, apply) for each layer in network order."""
    layers, names, pools = [], iter(fsq_nnx.fire_names(model.stages)), 0
    for stage in model.stages:
        if isinstance(stage, Conv):
            kind = f"Conv {stage.kernel}x{stage.kernel}/{stage.stride} + ReLU"
            layers.append(("conv1", kind, model.conv1, lambda m, x: nnx.relu(m(x))))
        elif isinstance(stage, Fire):
            name = next(names)
            kind = f"Fire {stage.squeeze}/{stage.expand1x1}/{stage.expand3x3}"
            if model.bypass == "complex" and hasattr(model, f"{name}_bypass"):
                layers.append((name, kind + " + 1x1 bypass", nnx.List([getattr(model, name), getattr(model, f"{name}_bypass")]),
                               lambda m, x: m[0](x) + m[1](x)))  # fmt: skip
            elif model.bypass != "none" and stage.features == getattr(model, name).squeeze.in_features:
                layers.append((name, kind + " + identity bypass", getattr(model, name), lambda m, x: m(x) + x))
            else:
                layers.append((name, kind, getattr(model, name), lambda m, x: m(x)))
        else:
            pools += 1
            layers.append((f"pool{pools}", "MaxPool 3x3/2", None, lambda m, x: fsq_nnx.max_pool_3x3_ceil(x)))
    layers.append(("classifier", "Conv 1x1 + ReLU", model.classifier, lambda m, x: nnx.relu(m(x))))
    layers.append(("avgpool", "global average", None, lambda m, x: jnp.mean(x.astype(jnp.float32), axis=(1, 2))))
    return layers


def summarize(model: models.SqueezeNet | fsq_nnx.SqueezeNet, input_shape: Sequence[int] = (1, 224, 224, 3)) -> Summary:
    """The per-layer table of a linen or NNX SqueezeNet for NHWC inputs of `input_shape`.

    Raises ValueError if the input does not fit the model (as the model's own call would).
    """
    abstract = _abstract_nnx(model)
    input_shape = tuple(input_shape)
    x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
    abstract.linen_module()._check_input(x)
    x = jax.ShapeDtypeStruct(input_shape, abstract.dtype)
    rows = []
    for name, kind, module, apply in _layers(abstract):
        x, params, flops = _cost(module, apply, x)
        rows.append(Layer(name, kind, tuple(x.shape), params, flops))
    return Summary(input_shape, tuple(rows))


def summary(model: models.SqueezeNet | fsq_nnx.SqueezeNet, input_shape: Sequence[int] = (1, 224, 224, 3)) -> Summary:
    """Print the per-layer table of `model` (see `summarize`) and return it."""
    table = summarize(model, input_shape)
    print(table)
    return table
