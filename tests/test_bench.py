"""The benchmark scripts run end to end at a tiny size and report every figure (not timing)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import benchmark  # noqa: E402

# One jax engine of each kind of worker (the other jax engines differ only in dtype or compiler options).
ENGINES = ["jax-f32", "torch-eager", "ort-ours", "ort-torch"]


def test_torch_reference_computes_the_flax_model():
    import jax
    import numpy as np
    import torch
    from torch_reference import TorchSqueezeNet, load_flax_params

    import flax_squeezenet as fsq

    model = fsq.squeezenet1_0(num_classes=9)
    images = np.random.default_rng(0).standard_normal((2, 40, 40, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), images)
    reference = load_flax_params(TorchSqueezeNet(model.stages, num_classes=9).eval(), variables["params"])
    with torch.no_grad():
        got = reference(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(got, model.apply(variables, images), rtol=1e-4, atol=1e-6)


def test_rounds_report_each_figure_and_ratio_as_its_median():
    rounds = [
        [{"model": "m", "engine": "jax-f32", "train_images_per_s": t, "compile_train_s": c, "options": {"a": "b"}}]
        for t, c in [(10.0, 3.0), (30.0, 5.0), (20.0, 4.0)]
    ]
    (row,) = benchmark.median_over_rounds(rounds)
    assert row == {"model": "m", "engine": "jax-f32", "train_images_per_s": 20.0, "compile_train_s": 4.0,
                   "options": {"a": "b"}}  # fmt: skip
    ratios = [
        [{"model": "m", "ours": "jax-f32", "peer": "torch-eager", "train_images_per_s": r},
         {"model": "n", "ours": "jax-f32", "peer": "torch-eager", "train_images_per_s": 5.0}]
        for r in (1.3, 0.9, 1.1)
    ]  # fmt: skip
    ratios[1].reverse()  # rounds are matched by model and engines, not by position
    ratio, other = benchmark.median_over_rounds(ratios)
    assert other["train_images_per_s"] == 5.0
    assert ratio["train_images_per_s"] == 1.1
    assert ratio["per_round"] == {"train_images_per_s": [1.3, 0.9, 1.1]}
    report = {"machine": {"cpu": "x", "cpus": 2}, "batch": 32, "size": 224, "repeats": 5, "rounds": 3,
              "matmul_gflops": 180.0, "compiler_options": {}, "rows": [], "ratios": [ratio]}  # fmt: skip
    table = benchmark.markdown(report)
    assert "| m | jax-f32 | torch-eager | - | 1.10 (1.30, 0.90, 1.10) |" in table
    assert "then of 3 rounds" in table


@pytest.mark.slow
def test_quick_benchmark_writes_table_and_json(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "benchmark.py"), "--quick", "--models", "squeezenet1_1",
         "--engines", *ENGINES, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {row["engine"]: row for row in report["rows"]}
    assert set(rows) == set(ENGINES) and set(ENGINES) <= set(benchmark.ENGINES)
    for engine, row in rows.items():
        assert row["infer_images_per_s"] > 0 and row["latency_b1_ms"] > 0 and row["peak_rss_mib"] > 0, engine
    for engine in ("jax-f32", "torch-eager"):
        assert rows[engine]["train_images_per_s"] > 0
    assert rows["jax-f32"]["compile_train_s"] > 0 and rows["jax-f32"]["flops_per_image"] > 0
    assert rows["jax-f32"]["compiler_options"], "jax-f32 must run with flax_squeezenet.compiler_options"
    assert report["matmul_gflops"] > 0
    assert {(r["ours"], r["peer"]) for r in report["ratios"]} >= {("jax-f32", "torch-eager"), ("ort-ours", "ort-torch")}
    table = (tmp_path / "benchmark.md").read_text()
    assert "| squeezenet1_1 | ort-ours |" in table and "GFLOP per image" in table


@pytest.mark.slow
def test_gpu_script_runs_at_a_tiny_size(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, GPU_BENCH_BATCH="2", GPU_BENCH_SIZE="32",
               GPU_BENCH_REPEATS="1", GPU_BENCH_MODELS="squeezenet1_1", GPU_BENCH_ALLOW_CPU="1")  # fmt: skip
    completed = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path)], capture_output=True, text=True, env=env, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    engines = {(r["engine"], r["model"], r["dtype"]) for r in report["rows"]}
    assert len(engines) == 4  # jax and torch, float32 and bfloat16
    assert all(r["infer_images_per_s"] > 0 and r["train_images_per_s"] > 0 for r in report["rows"])
    assert "| squeezenet1_1 | jax | bfloat16 |" in (tmp_path / "gpu_benchmark.md").read_text()


def test_gpu_script_wants_an_output_directory():
    completed = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True)
    assert completed.returncode == 2 and "usage" in completed.stderr


def test_benchmark_times_the_training_programs_own_step(monkeypatch):
    from train import steps

    traced = []
    real_step = steps.train_step

    def recording_step(state, batch, **kwargs):
        traced.append(kwargs)
        return real_step(state, batch, **kwargs)

    monkeypatch.setattr(steps, "train_step", recording_step)
    config = {"model": "squeezenet1_1", "engine": "jax-f32", "batch": 2, "size": 32, "repeats": 1}
    result = benchmark._program_train_step(config, {})
    assert len(traced) == 1 and traced[0]["label_smoothing"] == result["train_label_smoothing"] > 0
    assert result["train_images_per_s"] > 0 and result["compile_train_s"] > 0


@pytest.mark.slow
def test_int8_bench_measures_a_training_runs_model_and_leaves_no_files(tmp_path, monkeypatch):
    import tempfile

    import int8
    from train_helpers import tiny_config, train_in_process

    workdir = tmp_path / "run"
    train_in_process(tiny_config(num_train_steps=2, eval_every_steps=2), workdir)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rows = int8.trained_model_rows(workdir, calibration_count=8)
    assert [row["format"] for row in rows] == ["ONNX float32", "ONNX int8", "LiteRT float32", "LiteRT int8"]
    assert {(row["test images"], row["calibration train images"]) for row in rows} == {(16, 8)}
    assert rows[0]["agreement with ONNX float32"] == 1.0 and rows[2]["max_logit_difference"] < 1e-4
    assert all(0.0 <= row["top1"] <= 1.0 for row in rows)
    assert not any(scratch.iterdir()), "the exported files were left behind"
