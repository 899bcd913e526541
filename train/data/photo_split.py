"""One folder of photos (a subfolder per class) split into train and held-out photos, stably.

A photo is held out when the hash of its path relative to the folder (``cat/IMG_0012.jpg``), read
as a number in [0, 1), is below ``holdout_fraction``. Each photo's side depends on its own path
only, so the split is stratified (every class is split by the same fraction) and adding photos
later never moves an old photo to the other side. A class the rule would leave without a held-out
(or a train) photo gives its lowest- (highest-) hashed photo to that side: only such tiny classes
can see a photo change side when photos are added to a new run's folder.

A run writes its split to ``split.json`` in its workdir; resuming and evaluating read it back
(`reconcile`): the written split wins; photos added to the folder since are left out of that run
(a warning counts them) and photos removed from it stop the run with a one-line error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib

from flax_squeezenet.storage import files
from train.data import sources

logger = logging.getLogger(__name__)

SPLIT_JSON = "split.json"
MIN_PHOTOS_PER_CLASS = 2  # one to train on, one to hold out
IMBALANCE_RATIO = 3.0  # largest / smallest class above this is reported
RULE = "held out when sha256(relative path) / 2**256 < holdout_fraction"


@dataclasses.dataclass(frozen=True)
class PhotoSplit:
    """The train and held-out photos of each class, as paths relative to ``photos`` (sorted)."""

    photos: str
    holdout_fraction: float
    class_names: tuple[str, ...]
    train: tuple[tuple[str, ...], ...]  # per class, in class_names' order
    held_out: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict:
        classes = {name: {"train": list(train), "held_out": list(held)}
                   for name, train, held in zip(self.class_names, self.train, self.held_out)}  # fmt: skip
        return {"photos": self.photos, "holdout_fraction": self.holdout_fraction, "rule": RULE, "classes": classes}

    def counts(self) -> dict[str, tuple[int, int]]:
        """Class name -> (train photos, held-out photos)."""
        return {name: (len(t), len(h)) for name, t, h in zip(self.class_names, self.train, self.held_out)}


def hash_position(relative_path: str) -> float:
    """Where `relative_path` (POSIX) falls in [0, 1): its sha256 read as a fraction."""
    return int.from_bytes(hashlib.sha256(relative_path.encode()).digest(), "big") / 2**256


def side_of_class(relative_paths: list[str], fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, held out) of one class's photos by the hash rule, each side given at least one photo."""
    ranked = sorted(relative_paths, key=hash_position)
    held = [p for p in ranked if hash_position(p) < fraction] or ranked[:1]
    if len(held) == len(ranked):
        held = held[:-1]
    kept = set(held)
    return tuple(sorted(p for p in ranked if p not in kept)), tuple(sorted(held))


def check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"holdout_fraction must be a number in (0, 1), e.g. 0.2, got {fraction!r}")
    return float(fraction)


def list_photos(photos: str | os.PathLike) -> dict[str, list[str]]:
    """Class name -> its photos' paths relative to `photos`; refuses a folder with under 2 classes,
    an empty class and a class of fewer than `MIN_PHOTOS_PER_CLASS` photos, in one line naming it."""
    root = pathlib.Path(photos)
    if not root.is_dir():
        raise FileNotFoundError(f"photos {photos} is not a folder: expected one subfolder of photos per class")
    class_names = sources.class_folders(root)
    if len(class_names) < 2:
        raise ValueError(f"photos {photos} has {len(class_names)} class subfolders, expected at least 2")
    listing = sources.list_class_folders(root, class_names)
    sources.report_listing("photos", str(photos), listing, class_names)
    few = {name: len(paths) for name, paths in listing.images.items() if len(paths) < MIN_PHOTOS_PER_CLASS}
    if few:
        raise ValueError(
            f"photos {photos}: too few photos to split in class {', '.join(f'{k!r} ({v})' for k, v in few.items())}: "
            f"each class needs at least {MIN_PHOTOS_PER_CLASS} (one to train on, one held out); add photos"
        )
    return {name: [pathlib.Path(p).relative_to(root).as_posix() for p in paths] for name, paths in listing.images.items()}


def make_split(photos: str | os.PathLike, holdout_fraction: float) -> PhotoSplit:
    """The split of `photos` by the hash rule (see the module docstring); imbalance is logged."""
    fraction = check_fraction(holdout_fraction)
    listed = list_photos(photos)
    sides = [side_of_class(paths, fraction) for paths in listed.values()]
    split = PhotoSplit(str(pathlib.Path(photos).resolve()), fraction, tuple(listed),
                       tuple(s[0] for s in sides), tuple(s[1] for s in sides))  # fmt: skip
    report_imbalance(split)
    return split


def report_imbalance(split: PhotoSplit) -> None:
    """Log one warning line when the largest class has over `IMBALANCE_RATIO` times the photos of the smallest."""
    totals = {name: t + h for name, (t, h) in split.counts().items()}
    largest, smallest = max(totals, key=totals.get), min(totals, key=totals.get)
    ratio = totals[largest] / totals[smallest]
    if ratio > IMBALANCE_RATIO:
        logger.warning("class imbalance %.1f:1: %r has %d photos, %r %d; accuracy mostly reflects the large classes "
                       "(see the per-class recall in the report)", ratio, largest, totals[largest], smallest,
                       totals[smallest])  # fmt: skip


def read_split(path: str | os.PathLike) -> PhotoSplit:
    """The split written to `path` by `write_split`; a one-line error naming it if it is not one."""
    path = files.user_path(path)
    try:
        data = json.loads(path.read_text())
        classes = data["classes"]
        return PhotoSplit(str(data["photos"]), float(data["holdout_fraction"]), tuple(classes),
                          tuple(tuple(c["train"]) for c in classes.values()),
                          tuple(tuple(c["held_out"]) for c in classes.values()))  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a split written by python -m train ({type(error).__name__}: {error})") from None


def write_split(split: PhotoSplit, path: str | os.PathLike) -> None:
    """Write `split` as JSON to `path`, whole or not at all (`files.atomic_file`)."""
    with files.atomic_file(path) as temporary:
        temporary.write_text(json.dumps(split.to_dict(), indent=1) + "\n")


def reconcile(saved: PhotoSplit, photos: str | os.PathLike) -> PhotoSplit:
    """`saved`, read against the folder `photos` now: photos added since are left out (logged), photos
    removed since, or a missing class, stop with a one-line error naming one."""
    root = pathlib.Path(photos)
    if not root.is_dir():
        raise FileNotFoundError(f"photos {photos} is not a folder (the run's {SPLIT_JSON} lists photos there)")
    listing = sources.list_class_folders(root, [n for n in saved.class_names if (root / n).is_dir()])
    now = {pathlib.Path(p).relative_to(root).as_posix() for paths in listing.images.values() for p in paths}
    written = {p for side in (saved.train, saved.held_out) for paths in side for p in paths}
    missing = sorted(written - now)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} photos of this run's {SPLIT_JSON} are no longer in {photos}, e.g. {missing[0]}: "
            "put them back, or start a new --workdir to train on the folder as it is now"
        )
    added = len(now - written)
    if added:
        logger.warning("%d photos were added to %s since this run's %s was written: this run leaves them out "
                       "(a new --workdir trains on them; the split rule keeps the old photos' sides)",
                       added, photos, SPLIT_JSON)  # fmt: skip
    return dataclasses.replace(saved, photos=str(root.resolve()))


def split_for_workdir(photos: str | os.PathLike, holdout_fraction: float, workdir: files.AnyPath) -> PhotoSplit:
    """The run's split: `workdir`'s `split.json` read back when it exists (`reconcile`; its own
    fraction holds), else made from `photos`."""
    path = files.user_path(workdir) / SPLIT_JSON
    if path.is_file():
        return reconcile(read_split(path), photos)
    return make_split(photos, holdout_fraction)
