"""Training configurations as code: `default.py` lists every key; each preset adjusts it for a dataset.

A config is named on the command line by preset (`--config fashion_mnist`) or by file
(`--config path/to/config.py`, any file with a `get_config()`); see `resolve_config_path`.
"""

from __future__ import annotations

import pathlib

import ml_collections

CONFIG_DIR = pathlib.Path(__file__).resolve().parent
PRESETS = ("fashion_mnist", "cifar10", "imagenet")


def resolve_config_path(name_or_path: str) -> pathlib.Path:
    """The config file a preset name or a path names; a clear error when it is neither."""
    if name_or_path in PRESETS:
        return CONFIG_DIR / f"{name_or_path}.py"
    path = pathlib.Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        return path
    raise ValueError(
        f"unknown config {name_or_path!r}: expected a preset ({', '.join(PRESETS)}) "
        "or the path of a .py file with a get_config() function"
    )


def get_preset(name: str) -> ml_collections.ConfigDict:
    """The config of preset `name` (one of `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    if name == "fashion_mnist":
        from train.configs import fashion_mnist as module
    elif name == "cifar10":
        from train.configs import cifar10 as module
    else:
        from train.configs import imagenet as module
    return module.get_config()
