"""The 1,000 ImageNet-1k class names in class-index order.

The names are not shipped with the package: they come from an explicit file, the file named by
`$FLAX_SQUEEZENET_CLASS_NAMES`, or a copy downloaded once into the cache directory.
"""

from __future__ import annotations

import os

from flax_squeezenet.storage import download, files

CLASS_NAMES_URL = "https://raw.githubusercontent.com/pytorch/hub/master/imagenet_classes.txt"
CLASS_NAMES_ENV = "FLAX_SQUEEZENET_CLASS_NAMES"
CLASS_NAMES_FILE = "imagenet_classes.txt"
NUM_CLASSES = 1000


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The class names in a text file of one name per line, line i naming class i.

    A line may list synonyms ("tench, Tinca tinca"); the first is the class name. Raises ValueError
    unless there are exactly 1,000 non-empty lines.
    """
    try:
        text = files.user_path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of class names (one per line)") from None
    lines = [line.strip() for line in text.splitlines()]
    names = [line.split(",")[0].strip() for line in lines if line]
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{path} has {len(names)} class names, expected {NUM_CLASSES} (one per line)")
    return names


def imagenet_class_names(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """The 1,000 ImageNet class names; `names[i]` names class i.

    From `path`, else `$FLAX_SQUEEZENET_CLASS_NAMES`, else the cached copy, else downloaded from
    `CLASS_NAMES_URL` into the cache. Raises `download.DownloadError` when offline and uncached.
    """
    if path is None and os.environ.get(CLASS_NAMES_ENV):
        path = os.environ[CLASS_NAMES_ENV]
    if path is None:
        path = download.cache_dir(cache_dir) / CLASS_NAMES_FILE
        if not path.is_file():
            try:
                with download.downloaded(CLASS_NAMES_URL, path.parent) as fetched:
                    read_class_names(fetched)  # never cache a file that is not the list
                    os.replace(fetched, path)
            except download.DownloadError as error:
                raise download.DownloadError(
                    f"{error}. The ImageNet class names are needed once: fetch {CLASS_NAMES_URL} "
                    f"elsewhere and set {CLASS_NAMES_ENV}=/path/to/{CLASS_NAMES_FILE} (or copy it to {path})"
                ) from None
    return read_class_names(path)
