"""Weights in the Hugging Face Hub layout: `model.safetensors` plus `config.json`.

`model.safetensors` holds one tensor per parameter, named by its path in the linen/NNX tree joined
with dots, in Flax's layout (kernels HWIO: height, width, in, out):

    conv1.kernel (k, k, C, 64|96)      conv1.bias
    fire{2..9}.{squeeze,expand1x1,expand3x3}.{kernel,bias}
    fire{2,4,6,8}_bypass.{kernel,bias}  (complex bypass only)
    classifier.kernel (1, 1, 512, N)   classifier.bias

`config.json` is {"model": variant, "model_kwargs": {...}, "num_classes", "in_channels",
"preprocessing": {mean, std, resize_size, crop_size, channel_order}, "class_names": [...] (when
known)}. `hf://owner/repo[@revision]` names such a directory in a Hub model repository; it is
fetched through `huggingface_hub` (the `hub` extra) in its cache layout, which keys files by their
sha256, under this package's cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
from typing import Any

import flax.traverse_util
import numpy as np

from flax_squeezenet.storage import download, files
from flax_squeezenet.storage.download import DownloadError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
HUB_PREFIX = "hf://"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HUB_NAME = re.compile(r"hf://([\w.-]+/[\w.-]+)(?:@([\w./-]+))?")


def is_safetensors_dir(directory: pathlib.Path) -> bool:
    """Whether `directory` holds a `model.safetensors` and a `config.json`."""
    return (directory / WEIGHTS_FILE).is_file() and (directory / CONFIG_FILE).is_file()


def _may_replace(directory: pathlib.Path) -> bool:
    if not directory.exists():
        return True
    return directory.is_dir() and (is_safetensors_dir(directory) or not any(directory.iterdir()))


def save_safetensors(directory: str | os.PathLike, variables: Any, config: dict[str, Any]) -> pathlib.Path:
    """Write `variables["params"]` as `model.safetensors` and `config` as `config.json` in `directory`.

    The files go to a temporary sibling directory (with the user's umask) that replaces
    `directory` only once complete, so a failed save leaves an earlier one intact. Refuses to
    replace a directory that is neither empty nor such a save. Returns the absolute path.
    """
    from safetensors.numpy import save_file

    directory = files.user_path(directory)
    if not _may_replace(directory):
        raise FileExistsError(f"{directory} exists and is not a {WEIGHTS_FILE} + {CONFIG_FILE} directory; not replacing it")
    params = variables["params"]
    config = {**config, "num_classes": int(params["classifier"]["kernel"].shape[-1]),
              "in_channels": int(params["conv1"]["kernel"].shape[2])}  # fmt: skip
    tensors = {".".join(path): np.ascontiguousarray(leaf) for path, leaf in flax.traverse_util.flatten_dict(params).items()}
    with files.atomic_directory(directory) as staging:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "flax"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def read_safetensors(directory: pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, {"params": ...}) from a directory `save_safetensors` wrote."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{directory / CONFIG_FILE} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise ValueError(f"{directory / CONFIG_FILE} has no \"model\" key naming the variant")
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{directory / WEIGHTS_FILE} is not a readable safetensors file: {error}") from None
    params = flax.traverse_util.unflatten_dict({tuple(name.split(".")): value for name, value in tensors.items()})
    return config, {"params": params}


def hub_directory(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The local directory holding `config.json` and `model.safetensors` of `hf://owner/repo[@revision]`.

    Downloads through `huggingface_hub` into its cache layout under `download.cache_dir(cache_dir)`
    /hub, beside the other downloads; it keeps the weights by the sha256 the Hub states for them
    and reuses them offline (`HF_HUB_OFFLINE=1`); `HF_ENDPOINT` points it at another server. The
    weights are checked against that sha256 and removed from the cache if they differ.
    Raises DownloadError.
    """
    match = _HUB_NAME.fullmatch(name)
    if not match:
        raise ValueError(f"expected hf://owner/repo or hf://owner/repo@revision, got {name!r}")
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(f"loading {name} needs huggingface_hub: pip install 'flax-squeezenet[hub]'") from None
    repo_id, revision = match[1], match[2]
    hub_cache = download.cache_dir(cache_dir) / "hub"
    try:
        paths = [
            huggingface_hub.hf_hub_download(repo_id, file_name, revision=revision, cache_dir=hub_cache)
            for file_name in (CONFIG_FILE, WEIGHTS_FILE)
        ]
    except Exception as error:  # huggingface_hub raises many kinds (HTTP, offline, not found)
        raise DownloadError(f"could not fetch {name} from the Hugging Face Hub: {error}") from None
    _verify_blob(pathlib.Path(paths[1]), name)
    return pathlib.Path(paths[1]).parent


def _verify_blob(path: pathlib.Path, name: str) -> None:
    """Check a Hub-cached LFS file against the sha256 its blob is named by; delete it if it differs."""
    blob = path.resolve()
    if not _SHA256.fullmatch(blob.name):
        return
    digest = hashlib.sha256()
    with open(blob, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        blob.unlink()
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{name}: {path.name} has sha256 {digest.hexdigest()}, but the Hub stated {blob.name}: "
            "the download is corrupt; it was removed from the cache"
        )
