"""`compress` and `save_compressed`: Deep Compression of any weights `load_pretrained` reads,
post-training (optional magnitude pruning, then weight sharing), into a `.sqz` or `.net` file."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.traverse_util
import jax
import numpy as np
import tqdm.auto

from flax_squeezenet.compression import pruning
from flax_squeezenet.compression.adaptive import adaround_shared
from flax_squeezenet.compression.finetune import stored_input
from flax_squeezenet.compression.rounding import WEIGHT_ROUNDINGS
from flax_squeezenet.compression.sharing import share_weights
from flax_squeezenet.weights import netfile, pretrained, sqz
from flax_squeezenet.weights.compressed import CompressedModel, check_bits
from flax_squeezenet.weights.deepcompression import fold_caffe_input, load_deep_compression
from flax_squeezenet.zoo.models import MODELS, SqueezeNet

FORMATS = ("squeezenet", "net")


def variant_name(module: SqueezeNet) -> str:
    """The key of `MODELS` whose constructor builds `module`'s architecture."""
    for name, factory in MODELS.items():
        keywords = getattr(factory, "keywords", None)
        if keywords is None or module.bypass != keywords.get("bypass", "none"):
            continue
        if all(getattr(module, key) == value for key, value in keywords.items()):
            return name
    raise ValueError("cannot compress a SqueezeNet built from metaparameters: no variant name rebuilds it")


def _flat(params: Any) -> dict[str, np.ndarray]:
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return {path: np.asarray(leaf, np.float32) for path, leaf in flat.items()}


def _convert_input(flat: dict[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
    """`flat` params with conv1 rewritten from the `source` input convention to `target`."""
    if source == target:
        return flat
    rewrite = fold_caffe_input if target == "torchvision" else netfile.unfold_caffe_input
    kernel, bias = rewrite(flat["conv1/kernel"].transpose(3, 2, 0, 1), flat["conv1/bias"])
    return {**flat, "conv1/kernel": kernel.transpose(2, 3, 1, 0), "conv1/bias": bias}


def read_source(weights: str | os.PathLike) -> tuple[SqueezeNet, str, dict[str, np.ndarray]]:
    """(module, input convention, flat float32 params) of anything `load_pretrained` reads. The
    paper's `.net` and `.sqz` files keep their stored convention, so their shared values stay exact."""
    module, variables = pretrained.load_pretrained(weights)
    path = pathlib.Path(weights)
    if path.suffix == ".net" and path.is_file():
        return module, "caffe_bgr", _flat(load_deep_compression(path, fold_input=False)[2])
    if path.suffix == sqz.SUFFIX and path.is_file():
        stored = sqz.read_compressed(path)
        return module, stored.input_convention, _flat(stored.stored_params())
    return module, "torchvision", _flat(variables["params"])


def _prune(
    flat: dict[str, np.ndarray], density: float | None, overrides: Mapping[str, float] | None
) -> dict[str, np.ndarray]:
    if density is None and not overrides:
        return flat
    params = flax.traverse_util.unflatten_dict(flat, sep="/")
    densities = pruning.layer_densities(params, 1.0 if density is None else density, overrides)
    pruned = jax.jit(pruning.apply_masks)(params, pruning.magnitude_masks(params, densities))
    return _flat(pruned)


def compress(
    weights: str | os.PathLike,
    *,
    bits: int = 8,
    layer_bits: Mapping[str, int] | None = None,
    density: float | None = None,
    layer_densities: Mapping[str, float] | None = None,
    input_convention: str | None = None,
    weight_rounding: str = "nearest",
    images: np.ndarray | None = None,
    progress: bool = False,
) -> CompressedModel:
    """Deep Compression without retraining of `weights` (a name or path `load_pretrained` reads).

    Kernels are pruned by magnitude when `density` (fraction kept, every conv) or `layer_densities`
    (by conv path, e.g. {"classifier": 0.2}) is given, then shared: `bits` per weight, or
    `layer_bits[conv path]`. Weights that already hold few enough distinct values keep them exactly.
    `input_convention` ("torchvision" or "caffe_bgr", for the `.net` format) defaults to the source's.
    `weight_rounding` "nearest" gives each weight its nearest shared value; "adaround" the one just
    below or above it that keeps each layer's output on `images` (NHWC, prepared by the weights'
    own `input_convention(weights).preprocess`) closest to the source's, and corrects the biases
    (`compression.adaptive`). The result carries that input convention as its `preprocessing`.
    `progress` shows a progress bar over the layers.
    """
    if weight_rounding not in WEIGHT_ROUNDINGS:
        raise ValueError(f"unknown weight_rounding {weight_rounding!r}; expected one of {', '.join(WEIGHT_ROUNDINGS)}")
    if weight_rounding == "adaround" and images is None:
        raise ValueError("weight_rounding 'adaround' fits each layer's output on calibration images: pass images")
    layer_bits = dict(layer_bits or {})
    for value in [bits, *layer_bits.values()]:
        check_bits(value)
    module, source_convention, flat = read_source(weights)
    if images is not None and (np.ndim(images) != 4 or np.shape(images)[-1] != module.in_channels):
        raise ValueError(f"expected images of shape (N, H, W, {module.in_channels}) for this model, "
                         f"got {np.shape(images)}")  # fmt: skip
    convention = input_convention or source_convention
    flat = _prune(_convert_input(flat, source_convention, convention), density, layer_densities)
    unknown = sorted(set(layer_bits) - {path.rsplit("/", 1)[0] for path in flat if flat[path].ndim >= 2})
    if unknown:
        raise ValueError(f"layer_bits names no conv layer: {', '.join(unknown)}")
    leaves = {}
    for path, leaf in tqdm.auto.tqdm(flat.items(), desc="sharing weights", unit="layer", disable=not progress):
        layer = path.rsplit("/", 1)[0]
        leaves[path] = share_weights(leaf, layer_bits.get(layer, bits)) if leaf.ndim >= 2 else leaf
    if weight_rounding == "adaround":
        leaves = adaround_shared(module, flat, leaves, stored_input(np.asarray(images, np.float32), convention), progress)
    kwargs = {key: getattr(module, key) for key, default in (("in_channels", 3), ("classifier_padding", 0))
              if getattr(module, key) != default}  # fmt: skip
    return CompressedModel(variant_name(module), kwargs, convention, leaves, pretrained.input_convention(weights))


def save_compressed(compressed: CompressedModel, path: str | os.PathLike, *, format: str | None = None) -> pathlib.Path:
    """Write `compressed` to `path`: `format` "squeezenet" (the `.sqz` file `load_pretrained`
    reads) or "net" (the paper's file); by default "net" for a `.net` path, else "squeezenet"."""
    format = format or ("net" if pathlib.Path(path).suffix == ".net" else "squeezenet")
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if format == "net":
        return netfile.save_net(compressed, path)
    return sqz.save_compressed_file(compressed, path)


def encoded_size(compressed: CompressedModel, format: str = "squeezenet") -> int:
    """The bytes `save_compressed` would write in `format`."""
    return len(netfile.encode_net(compressed) if format == "net" else sqz.encode_compressed(compressed))
