"""Pretrained weights: torchvision's ImageNet weights by name, and checkpoints from files.

`load_pretrained` reads any of: a name from `PRETRAINED` (downloaded once, verified, converted and
cached), a directory written by `save_pretrained` (an Orbax checkpoint plus `metadata.json`), a
torchvision `.pth` state dict (read without torch or arbitrary unpickling) or an ncnn `.param`/
`.bin` export, a `.sqz` file, or the SqueezeNet paper's Deep Compression `.net` file; a file's format
is told by its content (`formats`), the suffix only for `.net`. Every reader checks the sizes its
file declares against the model it names before reading by them (`sizes`). It returns the module
and its variables, checked against the module's shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from flax_squeezenet.storage import download, files
from flax_squeezenet.weights import convert, deepcompression, formats, ncnn, pth, safetensors_io, sqz
from flax_squeezenet.weights.conventions import (
    CLASS_NAMES_KEY,
    DEEP_COMPRESSION,
    IMAGENET,
    PREPROCESSING_KEY,
    InputConvention,
)
from flax_squeezenet.zoo import sizes
from flax_squeezenet.zoo.models import MODELS, SqueezeNet, create_model

METADATA_FILE = "metadata.json"
TRAINING_IMAGES_KEY = "training_images"  # {"root": folder, "files": [paths relative to it]}: see save_pretrained
VARIABLES_DIR = "variables"
DTYPE_KWARGS = ("dtype", "param_dtype")
DIGEST_KEY = "variables_sha256"


class DamagedCheckpointError(ValueError):
    """A save_pretrained directory whose files are missing, unreadable or not what was saved."""


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


def save_pretrained(
    directory: str | os.PathLike,
    variables: Any,
    *,
    model: str,
    format: str = "orbax",
    preprocessing: InputConvention | None = None,
    class_names: list[str] | None = None,
    training_images: Sequence[str | os.PathLike] | None = None,
    **model_kwargs: Any,
) -> files.AnyPath:
    """Save `variables` of the variant `model` built with `model_kwargs` to `directory`.

    `format="safetensors"` writes the Hugging Face Hub layout instead (see `safetensors_io`).
    `preprocessing` (default: ImageNet's, for 3-channel models only) and `class_names` travel with
    the weights; `training_images` (files the weights were trained on) are recorded under
    `TRAINING_IMAGES_KEY` ({"root": their common folder, "files": paths relative to it}), where
    `squeezenet-export --int8` takes its calibration photos when none are named (`training_image_files`).

    Writes an Orbax checkpoint of the variables plus `metadata.json` ({"model": ..., "model_kwargs":
    ...}; dtypes by name; the variables' sha256, checked on load), so `load_pretrained(directory)`
    rebuilds the same module. Directories and files get the modes the umask gives. The write goes
    to a temporary sibling directory that replaces `directory` only once complete: a failed save
    leaves an existing checkpoint intact. Refuses to replace a directory that is not a checkpoint.
    `directory` may be a URL `etils.epath` opens (`gs://bucket/model`; see `files`). Returns the
    directory's absolute path (an `epath.Path` for a URL).
    """
    directory = files.user_path(directory)
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    metadata = {"model": model, "model_kwargs": _encode_kwargs(model_kwargs),
                "preprocessing": _convention_for(preprocessing, model_kwargs.get("in_channels", 3)).to_dict()}  # fmt: skip
    if class_names is not None:
        metadata["class_names"] = list(class_names)
    if training_images:
        absolute = [os.path.abspath(path) for path in training_images]
        root = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
        metadata[TRAINING_IMAGES_KEY] = {"root": root, "files": [os.path.relpath(p, root) for p in absolute]}
    if format == "safetensors":
        return safetensors_io.save_safetensors(directory, variables, metadata)
    if format != "orbax":
        raise ValueError(f"expected format 'orbax' or 'safetensors', got {format!r}")
    metadata[DIGEST_KEY] = variables_digest(variables)
    if not _may_replace(directory):
        raise FileExistsError(f"{directory} exists and is not a checkpoint written by save_pretrained; not replacing it")
    with files.atomic_directory(directory) as staging:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / VARIABLES_DIR, variables)
            checkpointer.wait_until_finished()
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory


def _convention_for(preprocessing: InputConvention | None, in_channels: int) -> InputConvention:
    """`preprocessing`, or ImageNet's for a 3-channel model; ValueError if it does not give `in_channels`
    channels, so no saved model carries a convention it cannot be fed (tests/test_pretrained.py)."""
    if preprocessing is None and in_channels != 3:
        raise ValueError(f"a {in_channels}-channel model needs its preprocessing saved with it: pass preprocessing="
                         f"InputConvention(channel_order='L', mean=..., std=..., resize_size=..., crop_size=...); "
                         f"the default, ImageNet's, is for 3-channel RGB images")  # fmt: skip
    convention = preprocessing or IMAGENET
    if convention.channels != in_channels:
        raise ValueError(f"expected preprocessing for {in_channels}-channel images, got {convention.channels}-channel "
                         f"{convention.channel_order} ({convention})")  # fmt: skip
    return convention


def variables_digest(variables: Any) -> str:
    """The sha256 of every leaf's path, dtype, shape and bytes: equal exactly when the trees are."""
    digest = hashlib.sha256()
    leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
    for path, leaf in sorted((jax.tree_util.keystr(path), np.asarray(leaf)) for path, leaf in leaves):
        digest.update(f"{path} {leaf.dtype.str} {leaf.shape}\n".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def training_image_files(directory: str | os.PathLike) -> list[pathlib.Path] | None:
    """The training images a save_pretrained directory records (`TRAINING_IMAGES_KEY`), None if none
    (any other source); a one-line error naming the first that is gone."""
    path = pathlib.Path(directory) / METADATA_FILE
    if not path.is_file():
        return None
    recorded = _read_metadata(pathlib.Path(directory)).get(TRAINING_IMAGES_KEY)
    if not recorded:
        return None
    images = [pathlib.Path(recorded["root"]) / name for name in recorded["files"]]
    missing = next((image for image in images if not image.is_file()), None)
    if missing is not None:
        raise FileNotFoundError(f"{missing}, one of the training photos {path} records, is gone: pass --calibration IMAGES")
    return images


def _read_metadata(directory: pathlib.Path) -> dict[str, Any]:
    path = directory / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedCheckpointError(f"{path} is not valid JSON ({error}); expected save_pretrained's metadata") from None
    if not isinstance(metadata, dict) or metadata.get("model") not in MODELS:
        raise DamagedCheckpointError(f"{path}: expected a JSON object whose \"model\" is one of {', '.join(MODELS)}")
    if not isinstance(metadata.get("model_kwargs", {}), dict):
        raise DamagedCheckpointError(f"{path}: expected \"model_kwargs\" to be a JSON object of model options")
    return metadata


def _restore_variables(directory: pathlib.Path, check: Callable[[Any], None]) -> Any:
    """The variables in the Orbax checkpoint `directory`, as numpy arrays of the saved dtypes;
    `check` is called with them as declared (`sizes.shape_only` arrays) before anything is read."""
    with ocp.StandardCheckpointer() as checkpointer:
        # Orbax reports damage as AttributeError, ValueError or tensorstore errors depending on
        # which file is missing (tests/test_pretrained_damage.py): any failure here is damage.
        try:
            leaves = checkpointer.metadata(directory).item_metadata
            if leaves is None:
                raise ValueError("no readable _METADATA or manifest")
            declared = jax.tree_util.tree_map(lambda leaf: sizes.shape_only(leaf.shape, leaf.dtype), leaves.tree)
        except Exception as error:
            raise _unreadable(directory, error) from None
        check(declared)
        try:
            target = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), leaves.tree)
            return checkpointer.restore(directory, target)
        except Exception as error:
            raise _unreadable(directory, error) from None


def _unreadable(directory: pathlib.Path, error: Exception) -> DamagedCheckpointError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DamagedCheckpointError(f"{directory} is not a readable Orbax checkpoint: {reason}")


def _check_saved(declared: Any, metadata: dict[str, Any], directory: pathlib.Path) -> None:
    """Raise ValueError naming `directory` unless the declared variables are the saved model's."""
    params = declared.get("params", {}) if isinstance(declared, dict) else {}
    sizes.check_params(params, metadata["model"], _decode_kwargs(metadata.get("model_kwargs", {})), str(directory))


def _read_checkpoint(directory: pathlib.Path) -> tuple[str, dict[str, Any], Any]:
    if not _is_checkpoint(directory):
        raise ValueError(
            f"{directory} is not a checkpoint written by save_pretrained (expected {METADATA_FILE} and {VARIABLES_DIR}/)"
        )
    metadata = _read_metadata(directory)
    variables = _restore_variables(directory / VARIABLES_DIR, functools.partial(_check_saved, metadata=metadata,
                                                                               directory=directory))  # fmt: skip
    if DIGEST_KEY in metadata and variables_digest(variables) != metadata[DIGEST_KEY]:
        raise DamagedCheckpointError(
            f"{directory} is damaged: its variables do not match the {DIGEST_KEY} in {METADATA_FILE}"
        )
    return metadata["model"], _decode_kwargs(metadata.get("model_kwargs", {})), variables


def _convert_into_cache(weights: PretrainedWeights, directory: pathlib.Path) -> None:
    """Convert the published `.pth` (downloaded into the cache unless there, verified) into `directory`."""
    try:
        path = download.fetched(weights.url, directory.parent / weights.file_name, weights.sha256_prefix)
    except download.DownloadError as error:
        raise download.DownloadError(
            f"{error}. To work offline, fetch {weights.url} elsewhere and pass the file: "
            f"load_pretrained('/path/to/{weights.file_name}') or squeezenet-predict --weights /path/to/{weights.file_name}"
        ) from None
    model, params = convert.from_torchvision(pth.load_pth(path))
    if directory.exists() and not _is_checkpoint(directory):
        shutil.rmtree(directory)  # A damaged conversion of ours; save_pretrained only replaces checkpoints.
    save_pretrained(directory, {"params": params}, model=model)


def _read_named(name: str, cache_override: str | os.PathLike | None) -> tuple[str, dict[str, Any], Any]:
    """The published weights `name` from the cache, converted (and downloaded) first if absent or damaged."""
    weights = PRETRAINED[name]
    directory = download.cache_dir(cache_override) / pathlib.PurePosixPath(weights.file_name).stem
    if directory.exists():
        try:
            return _read_checkpoint(directory)
        except ValueError as damage:
            try:
                _convert_into_cache(weights, directory)
            except (OSError, ValueError) as error:
                raise DamagedCheckpointError(
                    f"the cached weights {directory} are damaged ({damage}) and could not be rebuilt ({error}); "
                    f"delete {directory} and retry"
                ) from None
    else:
        _convert_into_cache(weights, directory)
    return _read_checkpoint(directory)


def check_source(name_or_path: str | os.PathLike) -> None:
    """Return if `name_or_path` is a pretrained name, a Hub name or an existing file or directory;
    FileNotFoundError saying what was expected otherwise. Reads no weights and downloads nothing."""
    if not _is_named(name_or_path) and not str(name_or_path).startswith(safetensors_io.HUB_PREFIX):
        _existing_path(name_or_path)


def source_paths(name_or_path: str | os.PathLike) -> list[files.AnyPath]:
    """The files and directories on disk (or at a URL) that `load_pretrained(name_or_path)` reads:
    none for a published or Hub name, both files of an ncnn pair, else the path itself."""
    if _is_named(name_or_path) or str(name_or_path).startswith(safetensors_io.HUB_PREFIX):
        return []
    path = files.user_path(name_or_path)
    if path.suffix in (".param", ".bin"):
        return [path.with_suffix(".param"), path.with_suffix(".bin")]
    return [path]


def _is_named(name_or_path: str | os.PathLike) -> bool:
    return isinstance(name_or_path, str) and name_or_path in PRETRAINED


def _existing_path(name_or_path: str | os.PathLike) -> files.AnyPath:
    path = files.user_path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"{name_or_path} is neither a pretrained name ({', '.join(PRETRAINED)}) nor an existing "
            "file or directory"
        )
    return path


def _read_weights(name_or_path: str | os.PathLike, cache_override) -> tuple[str, dict[str, Any], Any]:
    """(architecture name, saved model options, variables as numpy) from any supported source."""
    if _is_named(name_or_path):
        return _read_named(name_or_path, cache_override)
    if str(name_or_path).startswith(safetensors_io.HUB_PREFIX):
        name_or_path = safetensors_io.hub_directory(str(name_or_path), cache_override)
    path = _existing_path(name_or_path)
    with files.local_copy(path) as local:
        try:
            return _read_local(local)
        except ValueError as error:
            if local == path:
                raise
            # The message names the temporary copy; the user knows the URL (tests/test_remote_paths.py).
            raise type(error)(str(error).replace(str(local), str(path))) from None


def _read_local(path: pathlib.Path) -> tuple[str, dict[str, Any], Any]:
    """(architecture name, saved model options, variables as numpy) from the local file or directory
    `path`, its format told by its content (`formats.file_format`)."""
    if path.is_dir() and safetensors_io.is_safetensors_dir(path):
        config, variables = safetensors_io.read_safetensors(path)
        return config["model"], _decode_kwargs(config.get("model_kwargs", {})), variables
    if path.is_dir():
        _check_not_half_safetensors(path)
        return _read_checkpoint(path)
    file_format = formats.file_format(path)
    if file_format == "sqz":
        return sqz.read_weights(path)
    if file_format == "net":
        model, kwargs, params = deepcompression.load_deep_compression(path)
        return model, kwargs, {"params": params}
    if file_format == "ncnn":
        model, params = ncnn.load_ncnn(path)
    else:
        model, params = convert.from_torchvision(pth.load_pth(path, check=functools.partial(_check_torchvision, path)))
    return model, {}, {"params": params}


def _check_not_half_safetensors(directory: pathlib.Path) -> None:
    """Raise ValueError naming the file a directory holding one of a safetensors save's two lacks."""
    pair = (safetensors_io.WEIGHTS_FILE, safetensors_io.CONFIG_FILE)
    present = [name for name in pair if (directory / name).exists()]
    if len(present) == 1 and not _is_checkpoint(directory):
        missing = next(name for name in pair if name not in present)
        raise ValueError(f"{directory} has {present[0]} but no {missing}: a safetensors save needs both")


def _check_torchvision(path: pathlib.Path, state_dict: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming `path` unless the declared torchvision state dict has the shapes of
    the SqueezeNet it describes."""
    try:
        model, params = convert.from_torchvision(state_dict)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    sizes.check_params(params, model, {}, str(path))


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
        downloaded into the cache on first use), or a path (relative, absolute, with `~`, or a
        URL `etils.epath` opens such as `gs://bucket/model`, read through a local copy): a
        torchvision `.pth` state dict, a directory written by `save_pretrained` (Orbax, or
        `model.safetensors` + `config.json`), an ncnn `.param`/`.bin` file, the paper's Deep
        Compression `.net` file (see `deepcompression` for its Caffe conventions), or
        `hf://owner/repo[@revision]` (a Hub repository in the safetensors layout; needs the `hub`
        extra). `pretrained.input_convention` gives the preprocessing each source expects.
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
        doesn't), or the file is not a supported checkpoint (naming it).
      DamagedCheckpointError: a save_pretrained directory is incomplete or its variables are not
        the saved ones (a ValueError naming the directory). A damaged cache of named weights is
        rebuilt instead, from the cached `.pth` or a new download.
      pth.UnsafePickleError: a `.pth` file's pickle refers to something other than tensors.
      FileNotFoundError: `name_or_path` is neither a known name nor an existing path.
      download.DownloadError: named weights are not cached and cannot be downloaded.
    """
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
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
        sizes.check_shapes(_without_head(expected), _without_head(variables), model_name)
        # Only the head leaves the jitted init, so XLA drops the backbone's initialisers.
        fresh_head = jax.jit(lambda key: module.init(key, dummy)["params"]["classifier"])(rng)
        variables = {**variables, "params": {**variables["params"], "classifier": fresh_head}}
    sizes.check_shapes(expected, variables, model_name)
    return module, jax.tree_util.tree_map(lambda leaf, spec: jnp.asarray(leaf, spec.dtype), variables, expected)


def _saved_metadata(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> tuple[dict, str] | None:
    """(the metadata JSON, its path) of a `save_pretrained` directory or Hub repository; None for other sources."""
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        return None
    if str(name_or_path).startswith(safetensors_io.HUB_PREFIX):
        path = safetensors_io.hub_directory(str(name_or_path), cache_dir) / safetensors_io.CONFIG_FILE
    elif safetensors_io.is_safetensors_dir(pathlib.Path(name_or_path)):
        path = pathlib.Path(name_or_path) / safetensors_io.CONFIG_FILE
    elif (pathlib.Path(name_or_path) / METADATA_FILE).is_file():
        path = pathlib.Path(name_or_path) / METADATA_FILE
    else:
        return None
    return files.read_json_object(path, "the weights' metadata"), str(path)


def input_convention(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> InputConvention:
    """The input convention of the weights `load_pretrained(name_or_path)` loads.

    Directories and `.sqz` files without one stored (older saves) and every torchvision source give
    `IMAGENET`.
    """
    saved = _saved_metadata(name_or_path, cache_dir)
    if saved is not None:
        stored, source = saved[0].get(PREPROCESSING_KEY), saved[1]
        return IMAGENET if stored is None else InputConvention.from_dict(stored, source)
    path = pathlib.Path(name_or_path)
    if not path.is_file():
        return IMAGENET
    if formats.file_format(path) == "net":
        return DEEP_COMPRESSION
    if formats.file_format(path) == "sqz":
        return sqz.read_preprocessing(path)
    return IMAGENET


def saved_class_names(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[str] | None:
    """The class names saved with the weights (`save_pretrained(..., class_names=...)`); None when
    the source stores none (torchvision's weights and other files: their classes are ImageNet's).

    Raises ValueError naming the metadata file if its "class_names" is not a list of strings.
    """
    saved = _saved_metadata(name_or_path, cache_dir)
    names = None if saved is None else saved[0].get(CLASS_NAMES_KEY)
    if names is not None and not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise ValueError(f"{saved[1]}: expected \"{CLASS_NAMES_KEY}\" to be a list of strings, got {names!r}")
    return names
