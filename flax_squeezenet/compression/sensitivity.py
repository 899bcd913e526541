"""Per-layer pruning densities from a sensitivity analysis, as Han et al. (2015) chose theirs.

Each conv is pruned alone by magnitude to each of `LEVELS` (the others kept whole) and the model's
top-1 agreement with the unpruned model is measured on images, so no labels are needed. Then,
starting from every layer whole, the layer whose next level loses the least agreement per weight
removed steps down, until at most `density` of all conv weights are kept. SqueezeNet's small early
layers (conv1, the first squeezes) lose half their agreement at a third of their weights, its large
late 3x3 expands almost nothing: a uniform density prunes the wrong weights (BENCHMARKS.md, "The
default Fashion-MNIST model through the same pipeline").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.traverse_util
import jax
import numpy as np
import tqdm.auto

from flax_squeezenet.compression import pruning

LEVELS: tuple[float, ...] = (0.5, 0.33, 0.2, 0.1)
# Among steps that lose no measured agreement, the one removing the most weights goes first.
_TIE_BREAK = 1e-4


def agreement_score(module: Any, params: Any, images: np.ndarray, batch_size: int = 256) -> Callable[[Any], float]:
    """A function of params: the fraction of `images` whose top-1 class `module` predicts as with `params`."""
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x, train=False).argmax(-1))
    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]

    def predict(candidate: Any) -> np.ndarray:
        return np.concatenate([np.asarray(apply(candidate, batch)) for batch in batches])

    reference = predict(params)
    return lambda candidate: float(np.mean(predict(candidate) == reference))


def conv_sizes(params: Any) -> dict[str, int]:
    """The number of weights of each conv kernel, by conv path."""
    flat = flax.traverse_util.flatten_dict(params)
    return {"/".join(path[:-1]): int(leaf.size) for path, leaf in flat.items() if np.ndim(leaf) >= 2}


def layer_agreement(
    params: Any, score: Callable[[Any], float], levels: tuple[float, ...] = LEVELS, progress: bool = False
) -> dict[str, dict[float, float]]:
    """score(params with one conv pruned by magnitude to a level), for every conv and level."""
    prune = jax.jit(pruning.apply_masks)
    table: dict[str, dict[float, float]] = {}
    for layer in tqdm.auto.tqdm(sorted(conv_sizes(params)), desc="sensitivity", unit="layer", disable=not progress):
        table[layer] = {}
        for level in levels:
            densities = pruning.layer_densities(params, 1.0, {layer: level})
            table[layer][level] = score(prune(params, pruning.magnitude_masks(params, densities)))
    return table


def allocate(sizes: Mapping[str, int], agreement: Mapping[str, Mapping[float, float]], density: float) -> dict[str, float]:
    """Per-conv densities (only the layers pruned) keeping at most `density` of all the weights in
    `sizes`, the cheapest agreement first; ValueError if even the lowest level keeps more."""
    levels = sorted({level for row in agreement.values() for level in row}, reverse=True)
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density < levels[-1]:
        raise ValueError(f"density {density} is below the lowest level measured, {levels[-1]}")
    steps = [1.0, *levels]
    loss = {layer: [0.0, *(1.0 - row[level] for level in levels)] for layer, row in agreement.items()}
    index = dict.fromkeys(sizes, 0)
    budget = density * sum(sizes.values())

    def kept() -> float:
        return sum(sizes[layer] * steps[i] for layer, i in index.items())

    while kept() > budget:
        def cost(layer: str) -> float:
            i = index[layer]
            return (loss[layer][i + 1] - loss[layer][i] + _TIE_BREAK) / (sizes[layer] * (steps[i] - steps[i + 1]))

        layer = min((layer for layer, i in index.items() if i + 1 < len(steps)), key=cost)
        index[layer] += 1
    return {layer: steps[i] for layer, i in sorted(index.items()) if i}


def sensitivity_densities(
    module: Any, params: Any, images: np.ndarray, density: float, *, progress: bool = False
) -> dict[str, float]:
    """Per-conv densities (conv path -> fraction kept; layers absent are kept whole) that keep at
    most `density` of `params`' conv weights, chosen by `layer_agreement` on `images` (float32
    [N, H, W, C], prepared as the model expects) with `allocate`."""
    score = agreement_score(module, params, images)
    return allocate(conv_sizes(params), layer_agreement(params, score, progress=progress), density)
