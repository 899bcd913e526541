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

from flax_squeezenet.zoo import layers, models
from flax_squeezenet.zoo import nnx as fsq_nnx


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: a layer of the plan (the classifier's global average on its own row)."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


@dataclasses.dataclass(frozen=True)
class Summary:
    """The layers in network order; `str()` is the printed table."""

    input_shape: tuple[int, ...]
    layers: tuple[Row, ...]

    @property
    def total_params(self) -> int:
        return sum(row.params for row in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(row.flops for row in self.layers)

    def __str__(self) -> str:
        header = ("layer", "type", "output shape", "params", "FLOPs")
        rows = [(row.name, row.kind, str(row.output_shape), f"{row.params:,}", f"{row.flops:,}")
                for row in self.layers]  # fmt: skip
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


def _kind(layer: layers.Layer) -> str:
    """The table's type column for a plan layer."""
    if layer.kind == "max_pool":
        return "MaxPool 3x3/2"
    if layer.kind == "fire":
        squeeze, expand1x1, expand3x3 = (conv.out_channels for conv in layer.convs)
        bypass = {"identity": " + identity bypass", "projection": " + 1x1 bypass", "none": ""}[layer.shortcut]
        return f"Fire {squeeze}/{expand1x1}/{expand3x3}{bypass}"
    padding = f" pad {layer.padding}" if layer.padding else ""
    return f"Conv {layer.kernel}x{layer.kernel}/{layer.stride}{padding} + ReLU"


def _rows(model: fsq_nnx.SqueezeNet) -> list[tuple[str, str, nnx.Module | None, Callable]]:
    """(name, type, module, apply) for each layer of the plan in network order, then the average."""
    *backbone, classifier = model.plan
    rows = []
    for layer in backbone:
        modules = model.layer_modules(layer)
        apply = lambda m, x, layer=layer: fsq_nnx.apply_layer(layer, m, x)  # noqa: E731
        rows.append((layer.name, _kind(layer), nnx.List(modules) if modules else None, apply))
    rows.append((classifier.name, _kind(classifier), model.classifier, lambda m, x: nnx.relu(m(x))))
    rows.append(("avgpool", "global average", None, lambda m, x: jnp.mean(x.astype(jnp.float32), axis=(1, 2))))
    return rows


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
    for name, kind, module, apply in _rows(abstract):
        x, params, flops = _cost(module, apply, x)
        rows.append(Row(name, kind, tuple(x.shape), params, flops))
    return Summary(input_shape, tuple(rows))


def summary(model: models.SqueezeNet | fsq_nnx.SqueezeNet, input_shape: Sequence[int] = (1, 224, 224, 3)) -> Summary:
    """Print the per-layer table of `model` (see `summarize`) and return it."""
    table = summarize(model, input_shape)
    print(table)
    return table
