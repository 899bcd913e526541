"""One folder of photos in: the stable held-out split, its refusals, the report, and export calibrated
on the run's own training photos (tiny folders made here; the accuracy runs are bench/photos.py)."""

import json
import logging
import pathlib
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image
from train_helpers import train_in_process

from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.deploy.onnx_int8 import HELD_BACK
from flax_squeezenet.weights import pretrained
from train import configs, evaluate, input_pipeline, linear_probe, run
from train import photos as photos_api
from train.data import photo_split, sources, transforms

CLASSES = ("cat", "dog", "owl")


def write_photos(root, per_class, start=0, classes=CLASSES):
    """`per_class` 24x24 JPEGs per class, numbered from `start`, each class a colour plus noise."""
    rng = np.random.default_rng(start)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            pixels = rng.integers(0, 80, (24, 24, 3)) + np.eye(3, dtype=int)[label % 3] * 170
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"IMG_{i:04d}.jpg")
    return root


def sides(split):
    return {p: side for side, per_class in (("train", split.train), ("held_out", split.held_out))
            for paths in per_class for p in paths}  # fmt: skip


def test_split_is_stratified_and_old_photos_keep_their_side_when_photos_are_added(tmp_path):
    photos = write_photos(tmp_path / "photos", per_class=100)
    before = photo_split.make_split(photos, 0.25)
    for name, (train, held) in before.counts().items():
        assert train + held == 100 and 12 <= held <= 40, (name, train, held)  # about a quarter of each class
    write_photos(photos, per_class=50, start=100)
    after = photo_split.make_split(photos, 0.25)
    old, new = sides(before), sides(after)
    assert len(new) == 3 * 150
    assert {p: new[p] for p in old} == old
    assert {new[p] for p in new.keys() - old.keys()} == {"train", "held_out"}


def test_a_tiny_class_still_gets_one_photo_on_each_side(tmp_path):
    photos = write_photos(tmp_path / "photos", per_class=2)
    assert set(photo_split.make_split(photos, 0.01).counts().values()) == {(1, 1)}
    assert set(photo_split.make_split(photos, 0.99).counts().values()) == {(1, 1)}


def photos_config(photos, **overrides):
    return input_pipeline_config(photos=str(photos), dataset="image_folder", cache_images=True, **overrides)


def input_pipeline_config(**overrides):
    config = configs.get_preset("finetune")
    config.update({"image_size": 20, "batch_size": 4, "eval_batch_size": 4, "init_from": None,
                   "classifier_init": "random", **overrides})  # fmt: skip
    return config


def test_refusals_name_the_class_or_the_photo(tmp_path):
    photos = write_photos(tmp_path / "photos", per_class=3)
    (photos / "emu").mkdir()
    with pytest.raises(ValueError, match=r"class folders \['emu'\] hold no images"):
        photo_split.make_split(photos, 0.2)
    Image.new("RGB", (8, 8)).save(photos / "emu" / "only.png")
    with pytest.raises(ValueError, match=r"too few photos to split in class 'emu' \(1\)"):
        photo_split.make_split(photos, 0.2)
    Image.new("RGB", (8, 8)).save(photos / "emu" / "second.png")
    broken = photos / "dog" / "IMG_0001.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(sources.UnreadableImageError, match=str(broken)):
        input_pipeline.open_data(photos_config(photos))


def test_strong_imbalance_is_reported_in_one_line(tmp_path, caplog):
    photos = write_photos(tmp_path / "photos", per_class=3)
    write_photos(photos, per_class=30, start=3, classes=("cat",))
    with caplog.at_level(logging.WARNING, logger="train.data.photo_split"):
        photo_split.make_split(photos, 0.2)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "class imbalance 11.0:1: 'cat' has 33 photos" in message and "\n" not in message


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny photos run (random init, 20 pixels, 8 steps): its photos folder, workdir and result."""
    root = tmp_path_factory.mktemp("photos_run")
    photos = write_photos(root / "photos", per_class=12)
    config = photos_config(photos, num_train_steps=8, num_evals=2, warmup_steps=1, augment="none")
    return photos, root / "run", train_in_process(config, root / "run"), config


def test_the_split_is_written_and_the_report_counts_the_held_out_photos(trained):
    photos, workdir, result, _ = trained
    written = json.loads((workdir / photo_split.SPLIT_JSON).read_text())
    held_out = {name: len(c["held_out"]) for name, c in written["classes"].items()}
    assert sum(held_out.values()) + sum(len(c["train"]) for c in written["classes"].values()) == 36
    rows = (workdir / "report" / "per_class.csv").read_text().splitlines()[1:]
    assert {row.split(",")[0]: int(row.split(",")[1]) for row in rows} == held_out
    confusion = [line.split(",")[1:] for line in (workdir / "report" / "confusion.csv").read_text().splitlines()[1:]]
    assert sum(int(v) for row in confusion for v in row) == sum(held_out.values()) == result["report"]["count"]
    for name in ("confusion_png", "mistakes_png"):
        assert open(result["report"][name], "rb").read(4) == b"\x89PNG"
    recorded = pretrained.training_image_files(result["model"])
    assert sorted(p.relative_to(photos).as_posix() for p in recorded) == sorted(
        p for c in written["classes"].values() for p in c["train"])  # fmt: skip


def test_resume_and_evaluate_keep_the_written_split(trained, caplog):
    photos, workdir, _, config = trained
    split_before = (workdir / photo_split.SPLIT_JSON).read_text()
    write_photos(photos, per_class=20, start=100)  # new photos: the written split wins, they are left out
    with caplog.at_level(logging.WARNING, logger="train.data.photo_split"):
        resumed = run.build_run(config, workdir)
    assert any("60 photos were added" in r.getMessage() for r in caplog.records)
    assert resumed.data.info.num_eval_examples == sum(len(h) for h in resumed.photo_split.held_out)
    assert json.dumps(resumed.photo_split.to_dict(), indent=1) + "\n" == split_before
    result = evaluate.evaluate_checkpoint(str(workdir))
    assert 0 <= result["top1"] <= 1
    assert (workdir / photo_split.SPLIT_JSON).read_text() == split_before


def test_tflite_int8_without_calibration_uses_the_training_photos(trained, tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    _, _, result, _ = trained
    train_photos = len(pretrained.training_image_files(result["model"]))
    output = tmp_path / "model_int8.tflite"
    argv = ["--weights", result["model"], "--format", "tflite", "--int8", "--weight-rounding", "nearest"]
    assert export_cli.main([*argv, "--output", str(output)]) == 0  # nearest: AdaRound's fit costs CI minutes
    assert f"on {round(train_photos * HELD_BACK)} held-back images" in capsys.readouterr().out
    assert output.stat().st_size > 0


@pytest.mark.parametrize("inside", ["", "my-photos/"])
def test_a_zip_of_the_class_folders_or_of_their_folder_unzips_to_the_photos(tmp_path, inside):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        for name in ("cat/1.jpg", "dog/2.jpg"):
            opened.writestr(inside + name, b"")
    folder = photos_api.unzip(archive)
    assert sorted(p.name for p in pathlib.Path(folder).iterdir()) == ["cat", "dog"]


def test_a_linear_probe_classifier_passes_the_relu_and_equals_the_regression_on_pooled_features(tmp_path):
    photos = write_photos(tmp_path / "photos", per_class=6)
    built = run.build_run(photos_config(photos, augment="none"), tmp_path / "run")
    params = jax.device_get(run.initial_state(built).params)
    probed = linear_probe.probe_classifier(built, params)
    maps, labels = linear_probe.train_feature_maps(built, params)
    pooled = maps.mean(axis=(1, 2))
    kernel = np.asarray(probed["classifier"]["kernel"]).reshape(pooled.shape[1], -1)
    expected = pooled @ kernel + np.asarray(probed["classifier"]["bias"])
    order = np.random.default_rng(built.config.seed).permutation(len(labels))  # train_feature_maps' choice
    prepare = transforms.EvalTransform(built.data.settings.preprocessing)
    images = np.stack([prepare.map(built.data.dataset.train[int(i)])["image"] for i in order])
    logits = np.asarray(built.model.apply({"params": probed}, images))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())
    assert np.mean(logits.argmax(-1) == np.asarray(built.data.dataset.train.labels)[order]) > 0.9
