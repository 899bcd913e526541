"""Pretrained weights: torchvision's ImageNet weights by name, and checkpoints from files.

`load_pretrained` reads any of: a name from `PRETRAINED` (downloaded once, verified, converted and
cached), a directory written by `save_pretrained` (an Orbax checkpoint plus `metadata.json`), a
torchvision `.pth` state dict (read without torch or arbitrary unpickling) or an ncnn `.param`/
`.bin` export, or the SqueezeNet paper's Deep Compression `.net` file. It returns the module and its variables, checked against the module's shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
import urllib.parse
import zipfile
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from flax_squeezenet import convert, deepcompression, download, ncnn, pth
from flax_squeezenet.models import MODELS, SqueezeNet, create_model

METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
DTYPE_KWARGS = ("dtype", "param_dtype")


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """Published weights: where to get them and what they score on ImageNet-1k val (acc@1, acc@5)."""

    model: str
    url: str
    sha256_prefix: str
    top1: float
    top5: float

    @property
    def file_name(self) -> str:
        return pathlib.PurePosixPath(urllib.parse.urlparse(self.url).path).name


PRETRAINED: dict[str, PretrainedWeights] = {
    "squeezenet1_0": PretrainedWeights(
        "squeezenet1_0", "https://download.pytorch.org/models/squeezenet1_0-b66bff10.pth", "b66bff10", 58.092, 80.420
    ),
    "squeezenet1_1": PretrainedWeights(
        "squeezenet1_1", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth", "b8a52dc0", 58.178, 80.624
    ),
}


def _encode_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    encoded = {}
    for key, value in model_kwargs.items():
        if key in DTYPE_KWARGS:
            value = jnp.dtype(value).name
        try:
            json.dumps(value)
        except TypeError:
            raise ValueError(
                f"cannot save model option {key}={value!r}: save_pretrained stores options as JSON "
                "(numbers, strings, lists; dtypes by name)"
            ) from None
        encoded[key] = value
    return encoded


def _decode_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: jnp.dtype(value) if key in DTYPE_KWARGS else value for key, value in model_kwargs.items()}


def _is_checkpoint(directory: pathlib.Path) -> bool:
    return (directory / METADATA_FILE).is_file() and (directory / VARIABLES_DIR).is_dir()


def _may_replace(directory: pathlib.Path) -> bool:
    """Whether save_pretrained may write `directory`: absent, empty, or a checkpoint it wrote."""
    if not directory.exists():
        return True
    return directory.is_dir() and (_is_checkpoint(directory) or not any(directory.iterdir()))


def save_pretrained(directory: str | os.PathLike, variables: Any, *, model: str, **model_kwargs: Any) -> pathlib.Path:
    """Save `variables` of the variant `model` built with `model_kwargs` to `directory`.

    Writes an Orbax checkpoint of the variables plus `metadata.json` ({"model": ..., "model_kwargs":
    ...}; dtypes by name), so `load_pretrained(directory)` rebuilds the same module. The write goes
    to a temporary sibling directory that replaces `directory` only once complete: a failed save
    leaves an existing checkpoint intact. Refuses to replace a directory that is not a checkpoint.
    Returns the directory's absolute path.
    """
    directory = pathlib.Path(directory).absolute()
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    metadata = {"model": model, "model_kwargs": _encode_kwargs(model_kwargs)}
    if not _may_replace(directory):
        raise FileExistsError(f"{directory} exists and is not a checkpoint written by save_pretrained; not replacing it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.saving-"))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / VARIABLES_DIR, variables)
            checkpointer.wait_until_finished()
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if directory.exists():
            retired = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.old-"))
            os.replace(directory, retired / directory.name)
            try:
                os.replace(staging, directory)
            except BaseException:
                os.replace(retired / directory.name, directory)
                retired.rmdir()
                raise
            shutil.rmtree(retired)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _read_checkpoint(directory: pathlib.Path) -> tuple[str, dict[str, Any], Any]:
    if not _is_checkpoint(directory):
        raise ValueError(f"{directory} is not a checkpoint written by save_pretrained (no {METADATA_FILE})")
    metadata = json.loads((directory / METADATA_FILE).read_text())
    with ocp.StandardCheckpointer() as checkpointer:
        leaves = checkpointer.metadata(directory / VARIABLES_DIR).item_metadata.tree
        target = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), leaves)
        variables = checkpointer.restore(directory / VARIABLES_DIR, target)
    return metadata["model"], _decode_kwargs(metadata.get("model_kwargs", {})), variables


def _named_checkpoint(name: str, cache_override: str | os.PathLike | None) -> pathlib.Path:
    """The cached, converted checkpoint of the published weights `name`; downloads it if absent."""
    weights = PRETRAINED[name]
    root = download.cache_dir(cache_override)
    directory = root / pathlib.PurePosixPath(weights.file_name).stem
    if _is_checkpoint(directory):
        return directory
    try:
        with download.downloaded(weights.url, root, weights.sha256_prefix) as path:
            model, params = convert.from_torchvision(pth.load_pth(path))
    except download.DownloadError as error:
        raise download.DownloadError(
            f"{error}. To work offline, fetch {weights.url} elsewhere and pass the file: "
            f"load_pretrained('/path/to/{weights.file_name}') or squeezenet-predict --weights /path/to/{weights.file_name}"
        ) from None
    return save_pretrained(directory, {"params": params}, model=model)


def _read_weights(name_or_path: str | os.PathLike, cache_override) -> tuple[str, dict[str, Any], Any]:
    """(architecture name, saved model options, variables as numpy) from any supported source."""
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        return _read_checkpoint(_named_checkpoint(name_or_path, cache_override))
    path = pathlib.Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"{name_or_path} is neither a pretrained name ({', '.join(PRETRAINED)}) nor an existing "
            "file or directory"
        )
    if path.is_dir():
        return _read_checkpoint(path)
    if not zipfile.is_zipfile(path) and path.suffix in (".param", ".bin") and ncnn.ncnn_paths(path)[0].is_file():
        model, params = ncnn.load_ncnn(path)
    elif path.suffix == ".net":
        model, params = deepcompression.load_deep_compression(path)
    elif path.suffix == ".sqz":
        from flax_squeezenet.compression.fileformat import read_weights  # keeps `import flax_squeezenet` light

        return read_weights(path)
    else:
        model, params = convert.from_torchvision(pth.load_pth(path))
    return model, {}, {"params": params}


_NAME_ORDER = {"conv1": 0, "squeeze": 0, "expand1x1": 1, "expand3x3": 2, "kernel": 0, "bias": 1, "classifier": 1000}


def _network_order(path: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """Sort key putting parameter paths in the order the network uses them (fire10 after fire9)."""

    def rank(name: str) -> tuple[int, int]:
        fire = re.fullmatch(r"fire(\d+)(_bypass)?", name)
        if fire:
            return int(fire[1]), 1 if fire[2] else 0
        return _NAME_ORDER.get(name, 2000), 0

    return tuple(rank(name) for name in path)


def _check_shapes(expected: Any, loaded: Any, model_name: str) -> None:
    """Raise ValueError naming the first parameter (in network order) that is missing or misfits."""
    expected_flat = flax.traverse_util.flatten_dict(expected)
    loaded_flat = flax.traverse_util.flatten_dict(loaded)
    for path in sorted(expected_flat.keys() | loaded_flat.keys(), key=_network_order):
        name = "/".join(path)
        if path not in loaded_flat:
            raise ValueError(f"parameter {name} is missing from the checkpoint ({model_name} has it)")
        if path not in expected_flat:
            raise ValueError(f"parameter {name} is in the checkpoint but not in {model_name}")
        if tuple(loaded_flat[path].shape) != tuple(expected_flat[path].shape):
            raise ValueError(
                f"parameter {name} has shape {tuple(loaded_flat[path].shape)} in the checkpoint, "
                f"but {model_name} expects {tuple(expected_flat[path].shape)}"
            )


def _without_head(variables: Any) -> Any:
    return {**variables, "params": {k: v for k, v in variables["params"].items() if k != "classifier"}}


def load_pretrained(
    name_or_path: str | os.PathLike,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    rng: jax.Array | None = None,
    cache_dir: str | os.PathLike | None = None,
    **model_kwargs: Any,
) -> tuple[SqueezeNet, dict]:
    """The module and its variables from published weights or a checkpoint file.

    Args:
      name_or_path: "squeezenet1_0" or "squeezenet1_1" (torchvision's IMAGENET1K_V1 weights,
        downloaded into the cache on first use), or a path: a torchvision `.pth` state dict, a
        directory written by `save_pretrained`, an ncnn `.param`/`.bin` file, or the paper's
        Deep Compression `.net` file (see `deepcompression` for its Caffe conventions).
      model: the variant (a key of `MODELS`) to build; by default the checkpoint's (for torchvision
        and ncnn files, v1.0 or v1.1 as told by the first conv's shape).
      num_classes: None keeps the checkpoint's classifier; another number replaces it by a fresh
        one, initialised as the model initialises it from `rng`, keeping the backbone.
      rng: key for a fresh classifier (default `jax.random.key(0)`).
      cache_dir: overrides the cache directory (see `download.cache_dir`).
      **model_kwargs: module options (dtype, param_dtype, dropout_rate, ...); they override the
        options saved with the checkpoint.

    Raises:
      ValueError: the weights don't fit the architecture (naming the first parameter that
        doesn't), or the file is not a supported checkpoint.
      FileNotFoundError: `name_or_path` is neither a known name nor an existing path.
      download.DownloadError: named weights are not cached and cannot be downloaded.
    """
    source_model, saved_kwargs, variables = _read_weights(name_or_path, cache_dir)
    model_name = model or source_model
    kwargs = {**saved_kwargs, **_decode_kwargs(model_kwargs)}
    kwargs.pop("num_classes", None)
    classifier = variables.get("params", {}).get("classifier", {}).get("kernel")
    checkpoint_classes = None if classifier is None else int(classifier.shape[-1])
    new_head = num_classes is not None and num_classes != checkpoint_classes
    head_classes = num_classes if num_classes is not None else checkpoint_classes
    module = create_model(model_name, **kwargs, **({} if head_classes is None else {"num_classes": head_classes}))
    size = module.min_input_size
    dummy = jnp.zeros((1, size, size, module.in_channels), jnp.float32)
    rng = jax.random.key(0) if rng is None else rng
    expected = jax.eval_shape(module.init, rng, dummy)
    if new_head:
        _check_shapes(_without_head(expected), _without_head(variables), model_name)
        # Only the head leaves the jitted init, so XLA drops the backbone's initialisers.
        fresh_head = jax.jit(lambda key: module.init(key, dummy)["params"]["classifier"])(rng)
        variables = {**variables, "params": {**variables["params"], "classifier": fresh_head}}
    _check_shapes(expected, variables, model_name)
    return module, jax.tree_util.tree_map(lambda leaf, spec: jnp.asarray(leaf, spec.dtype), variables, expected)
