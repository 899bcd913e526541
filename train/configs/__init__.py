"""Training configurations as code: `default.py` lists every key; each preset sets what differs for a dataset.

A config is named on the command line by preset (`--config cifar10`) or by file, as ml_collections
takes it (`--config path/to/config.py`, or `path/to/config.py:ARG` for a `get_config(ARG)`).
"""

from __future__ import annotations

import importlib
import pathlib

import ml_collections

CONFIG_DIR = pathlib.Path(__file__).resolve().parent
PRESETS = ("fashion_mnist", "cifar10", "cifar10_finetune", "cifar10_finetune_160", "imagenet", "finetune")
DEFAULT_PRESET = "fashion_mnist"


def config_file(name_or_path: str) -> str:
    """The `file.py[:arg]` a preset name or a config path names; ValueError when it is neither."""
    if name_or_path in PRESETS:
        return str(CONFIG_DIR / f"{name_or_path}.py")
    path = pathlib.Path(name_or_path.split(":", 1)[0])
    if path.suffix == ".py" and path.is_file():
        return name_or_path
    raise ValueError(
        f"unknown config {name_or_path!r}: expected a preset ({', '.join(PRESETS)}) "
        "or the path of a .py file with a get_config() function (optionally file.py:arg)"
    )


def get_preset(name: str) -> ml_collections.ConfigDict:
    """The config of preset `name` (one of `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return importlib.import_module(f"train.configs.{name}").get_config()
