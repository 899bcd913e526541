"""Speed of flax-squeezenet against its peers on this machine's CPU, side by side in one run.

For each model (squeezenet1_0, squeezenet1_1 by default) and each engine:
  jax-f32, jax-bf16   this project as it runs: jit with `flax_squeezenet.compiler_options(dtype)`
                      (bf16: dtype=bfloat16 compute, float32 parameters)
  jax-f32-xla-default jax-f32 jitted with XLA's default options, to show what the options are worth
  torch-eager         PyTorch eager, torchvision's architecture (bench/torch_reference.py)
  ort-ours            ONNX Runtime on `flax_squeezenet.deploy.onnx` output
  ort-torch           ONNX Runtime on the same architecture exported by torch.onnx.export
it measures batch-1 latency, batch-B inference images/s, and (jax, torch) the images/s of a
training step: for jax the training program's own step (`train.steps.train_step` on the state
`train.run` builds from `train/configs/default.py`: Adam with its schedule, label smoothing, the
step's metrics and gradient norm, dropout on), for torch the same loss (Adam, cross-entropy with
the same label smoothing, dropout on). Each configuration runs in its own
subprocess, so its peak memory is that process's peak resident set size (ru_maxrss, framework
included); jax rows add XLA's own figure (compiled memory_analysis: arguments + outputs +
temporaries). Also: jit compile time of apply and of the train step, FLOPs per image from XLA's
cost analysis, and achieved GFLOP/s as a fraction of the float32 matmul peak measured in the same
run (a 2048^3 jnp.dot). Times are medians of --repeats runs after warm-up; ratios (ours / peer)
come from the same run. With --rounds N the whole set runs N times, one configuration after
another, and the report gives each figure's median over the rounds and each ratio's median (with
its per-round values), so that one disturbed round does not decide a comparison.

    python bench/benchmark.py --rounds 3 --out bench_results  # the full run (BENCHMARKS.md)
    python bench/benchmark.py --quick --out /tmp/bench      # tiny sizes, checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ENGINES = ("jax-f32", "jax-f32-xla-default", "jax-bf16", "torch-eager", "ort-ours", "ort-torch")
BENCH_DIR = pathlib.Path(__file__).resolve().parent


def median_seconds(run: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `run()` over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------- workers (one per subprocess)


def worker_matmul_peak(config: dict) -> dict:
    import jax
    import jax.numpy as jnp

    n = config["matmul_size"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    seconds = median_seconds(lambda: dot(a, a).block_until_ready(), config["repeats"] + 2, warmup=2)
    return {"matmul_gflops": 2 * n**3 / seconds / 1e9}


def _jax_model(config: dict, dtype_name: str):
    import jax.numpy as jnp

    from flax_squeezenet import create_model

    return create_model(config["model"], dtype=getattr(jnp, dtype_name))


def worker_jax(config: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from flax_squeezenet import compiler_options

    model = _jax_model(config, "bfloat16" if config["engine"] == "jax-bf16" else "float32")
    options = {} if config["engine"] == "jax-f32-xla-default" else compiler_options(model.dtype)
    batch, size, repeats = config["batch"], config["size"], config["repeats"]
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), images[:1])
    result: dict[str, Any] = {"compiler_options": options}

    apply = jax.jit(lambda variables, images: model.apply(variables, images), compiler_options=options)
    start = time.perf_counter()
    compiled = apply.lower(variables, images).compile()
    result["compile_apply_s"] = time.perf_counter() - start
    result["flops_per_image"] = compiled.cost_analysis()["flops"] / batch
    result["xla_infer_mib"] = _xla_mib(compiled)
    seconds = median_seconds(lambda: compiled(variables, images).block_until_ready(), repeats)
    result["infer_images_per_s"] = batch / seconds
    single = apply.lower(variables, images[:1]).compile()
    result["latency_b1_ms"] = 1e3 * median_seconds(lambda: single(variables, images[:1]).block_until_ready(), repeats * 3)

    result.update(_program_train_step(config, options))
    return result


def _program_train_step(config: dict, options: dict[str, str]) -> dict:
    """Compile time, FLOPs, XLA memory and images/s of the training program's own step.

    The step is `train.steps.train_step` on the state `train.run` builds from the default config
    (Adam, warmup + cosine schedule, label smoothing, the step's metrics and gradient norm), jitted
    by `train.parallel` as the trainer does, with the batch put on the devices at each step.
    """
    import functools

    import numpy as np

    sys.path.insert(0, str(BENCH_DIR.parent))  # train/ runs from the checkout
    from train import parallel, steps
    from train import run as run_lib
    from train.configs import default

    batch, size = config["batch"], config["size"]
    run_config = default.get_config()
    run_config.update({
        "dataset": "synthetic", "model": config["model"], "image_size": size, "channels": 3, "augment": "none",
        "synthetic_num_classes": 1000, "synthetic_train_examples": batch, "synthetic_eval_examples": 1,
        "batch_size": batch, "num_train_steps": 10_000, "dtype": "bfloat16" if config["engine"] == "jax-bf16" else "float32",
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        run = run_lib.build_run(run_config, workdir)
    state = run_lib.initial_state(run)
    step_fn = functools.partial(steps.train_step, learning_rate_fn=run.learning_rate_fn,
                                label_smoothing=run_config.label_smoothing)  # fmt: skip
    rng = np.random.default_rng(0)
    local_batch = {"image": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
                   "label": rng.integers(0, 1000, batch).astype(np.int32)}  # fmt: skip
    result: dict[str, Any] = {"train_label_smoothing": run_config.label_smoothing}
    start = time.perf_counter()
    compiled_step = parallel.jit_train_step(step_fn, run.mesh, options).lower(
        state, parallel.make_global_batch(local_batch, run.mesh)).compile()  # fmt: skip
    result["compile_train_s"] = time.perf_counter() - start
    result["train_flops_per_image"] = compiled_step.cost_analysis()["flops"] / batch
    result["xla_train_mib"] = _xla_mib(compiled_step)
    holder = [state]

    def run_step():
        holder[0], metrics = compiled_step(holder[0], parallel.make_global_batch(local_batch, run.mesh))
        metrics["loss"].block_until_ready()

    result["train_images_per_s"] = batch / median_seconds(run_step, config["repeats"])
    return result


def _xla_mib(compiled) -> float | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    total = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
    return total / 2**20


def _torch_model(config: dict):
    sys.path.insert(0, str(BENCH_DIR))
    from torch_reference import TorchSqueezeNet

    from flax_squeezenet import create_model

    flax_model = create_model(config["model"])
    if flax_model.bypass != "none":
        raise ValueError(f"the PyTorch reference has no bypass variant ({config['model']})")
    return TorchSqueezeNet(flax_model.stages, flax_model.num_classes)


def worker_torch(config: dict) -> dict:
    import torch

    torch.manual_seed(0)
    model = _torch_model(config)
    batch, size, repeats = config["batch"], config["size"], config["repeats"]
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))
    result: dict[str, Any] = {}
    model.eval()
    with torch.no_grad():
        result["infer_images_per_s"] = batch / median_seconds(lambda: model(images), repeats)
        result["latency_b1_ms"] = 1e3 * median_seconds(lambda: model(images[:1]), repeats * 3)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def run_step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(images), labels, label_smoothing=_label_smoothing())
        loss.backward()
        optimizer.step()

    result["train_images_per_s"] = batch / median_seconds(run_step, repeats)
    return result


def _label_smoothing() -> float:
    """The default config's label smoothing, which the program's train step uses."""
    sys.path.insert(0, str(BENCH_DIR.parent))
    from train.configs import default

    return default.get_config().label_smoothing


def worker_ort(config: dict) -> dict:
    import numpy as np
    import onnxruntime

    batch, size, repeats = config["batch"], config["size"], config["repeats"]
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.onnx")
        start = time.perf_counter()
        _export(config, path)
        export_s = time.perf_counter() - start
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    run = lambda x: session.run(None, {"images": x})  # noqa: E731
    return {
        "export_s": export_s,
        "infer_images_per_s": batch / median_seconds(lambda: run(images), repeats),
        "latency_b1_ms": 1e3 * median_seconds(lambda: run(images[:1]), repeats * 3),
    }


def _export(config: dict, path: str) -> None:
    """Write the model's ONNX export: ours (flax_squeezenet.deploy.onnx) or torch.onnx.export's."""
    if config["engine"] == "ort-ours":
        import jax
        import jax.numpy as jnp

        from flax_squeezenet.deploy.onnx import save_onnx

        model = _jax_model(config, "float32")
        variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
        save_onnx(model, variables, path)
        return
    import torch

    model = _torch_model(config).eval()
    torch.onnx.export(
        model, torch.randn(1, 3, config["size"], config["size"]), path, input_names=["images"],
        output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip


WORKERS = {
    "matmul": worker_matmul_peak,
    "jax-f32": worker_jax,
    "jax-f32-xla-default": worker_jax,
    "jax-bf16": worker_jax,
    "torch-eager": worker_torch,
    "ort-ours": worker_ort,
    "ort-torch": worker_ort,
}


def run_worker(config: dict) -> None:
    result = WORKERS[config["engine"]](config)
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- driver


def measure(config: dict) -> dict:
    """Run one configuration in a fresh subprocess; its result dict, or {"error": ...}."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": (completed.stderr.strip().splitlines() or ["no output"])[-1]}


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def summarise(rows: list[dict], matmul_gflops: float) -> list[dict]:
    """Add achieved GFLOP/s, fraction of matmul peak, and ratios of the jax rows to each peer."""
    by_key = {(r["model"], r["engine"]): r for r in rows}
    for row in rows:
        jax_row = by_key.get((row["model"], "jax-f32"), {})
        flops = jax_row.get("flops_per_image")
        if flops and row.get("infer_images_per_s"):
            row["infer_gflops"] = flops * row["infer_images_per_s"] / 1e9
            row["infer_fraction_of_peak"] = row["infer_gflops"] / matmul_gflops
        train_flops = jax_row.get("train_flops_per_image")
        if train_flops and row.get("train_images_per_s"):
            row["train_gflops"] = train_flops * row["train_images_per_s"] / 1e9
            row["train_fraction_of_peak"] = row["train_gflops"] / matmul_gflops
    ratios = []
    for row in rows:
        if not row["engine"].startswith("jax"):
            continue
        for peer in ("torch-eager", "ort-torch"):
            other = by_key.get((row["model"], peer), {})
            ratio = {"model": row["model"], "ours": row["engine"], "peer": peer}
            for metric in ("infer_images_per_s", "train_images_per_s"):
                if row.get(metric) and other.get(metric):
                    ratio[metric] = row[metric] / other[metric]
            if len(ratio) > 3:
                ratios.append(ratio)
    for model in dict.fromkeys(r["model"] for r in rows):
        ours, theirs = by_key.get((model, "ort-ours"), {}), by_key.get((model, "ort-torch"), {})
        if ours.get("infer_images_per_s") and theirs.get("infer_images_per_s"):
            ratios.append({"model": model, "ours": "ort-ours", "peer": "ort-torch",
                           "infer_images_per_s": ours["infer_images_per_s"] / theirs["infer_images_per_s"]})  # fmt: skip
    return ratios


def _identity(entry: dict) -> tuple:
    return tuple(entry.get(key) for key in ("model", "engine", "ours", "peer"))


def median_over_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One dict per row or ratio of round 1, matched across rounds by model and engines: every
    number the median of its values in the rounds that have it, other fields as in round 1;
    ratios keep their per-round values under "per_round"."""
    by_identity = [{_identity(entry): entry for entry in entries} for entries in rounds]
    merged = []
    for first in rounds[0]:
        entries = [same[_identity(first)] for same in by_identity if _identity(first) in same]
        result = dict(first)
        for key, value in entries[0].items():
            if isinstance(value, float):
                values = [e[key] for e in entries if isinstance(e.get(key), float)]
                result[key] = statistics.median(values)
        if "peer" in result and len(entries) > 1:
            result["per_round"] = {
                metric: [e.get(metric) for e in entries]
                for metric in ("infer_images_per_s", "train_images_per_s") if metric in result
            }
        merged.append(result)
    return merged


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    meta = report["machine"]
    lines = [
        f"Machine: {meta['cpu']}, {meta['cpus']} CPUs; batch {report['batch']}, {report['size']}x"
        f"{report['size']}, median of {report['repeats']} timed runs"
        + (f", then of {report['rounds']} rounds" if report["rounds"] > 1 else "")
        + "; float32 matmul peak "
        f"{report['matmul_gflops']:.0f} GFLOP/s; jax-f32 compiler options: {report['compiler_options']}",
        "",
        "| model | engine | infer img/s | b1 latency ms | train img/s | infer GFLOP/s (% peak) "
        "| compile apply s | compile train s | peak RSS MiB | XLA infer/train MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['engine']} | error: {r['error']} |||||||")
            continue
        peak = r.get("infer_fraction_of_peak")
        gflops = "-" if peak is None else f"{r['infer_gflops']:.0f} ({100 * peak:.0f}%)"
        xla = "-" if r.get("xla_infer_mib") is None else f"{r['xla_infer_mib']:.0f} / {r['xla_train_mib']:.0f}"
        lines.append(
            f"| {r['model']} | {r['engine']} | {_cell(r.get('infer_images_per_s'))} "
            f"| {_cell(r.get('latency_b1_ms'))} | {_cell(r.get('train_images_per_s'))} | {gflops} "
            f"| {_cell(r.get('compile_apply_s'), 2)} | {_cell(r.get('compile_train_s'), 2)} "
            f"| {_cell(r.get('peak_rss_mib'), 0)} | {xla} |"
        )
    lines += ["", "| model | ours | peer | infer ratio | train ratio |", "|---|---|---|---|---|"]
    for q in report["ratios"]:
        cells = []
        for metric in ("infer_images_per_s", "train_images_per_s"):
            cell = _cell(q.get(metric), 2)
            per_round = q.get("per_round", {}).get(metric)
            if per_round and q.get(metric) is not None:
                cell += " (" + ", ".join(_cell(v, 2) for v in per_round) + ")"
            cells.append(cell)
        lines.append(f"| {q['model']} | {q['ours']} | {q['peer']} | {cells[0]} | {cells[1]} |")
    if report["rounds"] > 1:
        lines += ["", "Ratios: median over the rounds, each round's value in brackets."]
    flops = {r["model"]: r.get("flops_per_image") for r in report["rows"] if r["engine"] == "jax-f32"}
    lines += [""] + [f"{m}: {f / 1e9:.3f} GFLOP per image (XLA cost analysis, inference)"
                     for m, f in flops.items() if f]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["squeezenet1_0", "squeezenet1_1"])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of the whole set (medians over them)")
    parser.add_argument("--quick", action="store_true", help="batch 2, 64x64, 1 repeat: checks the script runs")
    parser.add_argument("--out", type=pathlib.Path, help="directory for benchmark.md and benchmark.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f"expected --rounds >= 1 and --repeats >= 1, got {args.rounds} and {args.repeats}")
    if args.quick:
        args.batch, args.size, args.repeats = 2, 64, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    common = {"batch": args.batch, "size": args.size, "repeats": args.repeats}
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rounds = []
    for round_index in range(args.rounds):
        matmul = measure({"engine": "matmul", "matmul_size": 256 if args.quick else 2048, **common})
        if "error" in matmul:
            print(f"matmul peak failed: {matmul['error']}", file=sys.stderr)
            return 1
        rows = []
        for model in args.models:
            for engine in args.engines:
                started = time.perf_counter()
                row = {"model": model, "engine": engine, **measure({"model": model, "engine": engine, **common})}
                print(f"round {round_index + 1}: {model} {engine}: {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
                rows.append(row)
        rounds.append({"matmul_gflops": matmul["matmul_gflops"], "rows": rows,
                       "ratios": summarise(rows, matmul["matmul_gflops"])})  # fmt: skip
    rows = median_over_rounds([r["rows"] for r in rounds])
    report = {
        "date": date,
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count()},
        **common,
        "rounds": args.rounds,
        "compiler_options": next((r.get("compiler_options") for r in rows if r["engine"] == "jax-f32"), None),
        "matmul_gflops": statistics.median(r["matmul_gflops"] for r in rounds),
        "rows": rows,
        "ratios": median_over_rounds([r["ratios"] for r in rounds]),
        "each_round": rounds if args.rounds > 1 else [],
    }
    table = markdown(report)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "benchmark.md").write_text(table)
        (args.out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
