"""GPU images/s of flax-squeezenet (jit) and, when installed with CUDA, PyTorch eager: float32 and bfloat16.

Run through bench/gpu.sh OUTDIR. Batch, image size and repeats come from the environment
(GPU_BENCH_BATCH=256, GPU_BENCH_SIZE=224, GPU_BENCH_REPEATS=10, GPU_BENCH_MODELS=
"squeezenet1_0 squeezenet1_1"), so the script can be
checked on a CPU at a tiny size; the device actually used is recorded with each row.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchmark import median_seconds  # noqa: E402

MODELS = tuple(os.environ.get("GPU_BENCH_MODELS", "squeezenet1_0 squeezenet1_1").split())


def jax_rows(batch: int, size: int, repeats: int) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import optax

    from flax_squeezenet import compiler_options, create_model

    rows = []
    device = str(jax.devices()[0])
    images = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
    labels = jax.random.randint(jax.random.key(1), (batch,), 0, 1000)
    for name in MODELS:
        for dtype in ("float32", "bfloat16"):
            model = create_model(name, dtype=getattr(jnp, dtype))
            variables = model.init(jax.random.key(0), images[:1])
            options = compiler_options(model.dtype)
            apply = jax.jit(lambda v, x, model=model: model.apply(v, x), compiler_options=options)
            infer = batch / median_seconds(lambda: apply(variables, images).block_until_ready(), repeats, warmup=2)
            optimizer = optax.adam(1e-3)

            def train_step(params, opt_state, model=model, optimizer=optimizer):
                def loss_fn(params):
                    logits = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(2)})
                    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

                loss, grads = jax.value_and_grad(loss_fn)(params)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return optax.apply_updates(params, updates), opt_state, loss

            step = jax.jit(train_step, donate_argnums=(0, 1), compiler_options=options)
            state = [variables["params"], optimizer.init(variables["params"])]

            def run_step():
                state[0], state[1], loss = step(state[0], state[1])
                loss.block_until_ready()

            train = batch / median_seconds(run_step, repeats, warmup=2)
            rows.append({"model": name, "engine": "jax", "dtype": dtype, "device": device,
                         "infer_images_per_s": infer, "train_images_per_s": train})  # fmt: skip
    return rows


def torch_rows(batch: int, size: int, repeats: int) -> list[dict]:
    try:
        import torch
    except ImportError:
        return []
    from torch_reference import TorchSqueezeNet

    from flax_squeezenet import create_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("GPU_BENCH_ALLOW_CPU") != "1":
        return []  # PyTorch without CUDA: no GPU peer to compare with.
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.backends.cudnn.benchmark = True
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)
    rows = []
    for name in MODELS:
        for dtype in ("float32", "bfloat16"):
            model = TorchSqueezeNet(create_model(name).stages).to(device, memory_format=torch.channels_last)
            autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

            def infer_once():
                with torch.no_grad(), autocast:
                    model(images)
                synchronize()

            model.eval()
            infer = batch / median_seconds(infer_once, repeats, warmup=2)
            model.train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

            def run_step():
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
                loss.backward()
                optimizer.step()
                synchronize()

            train = batch / median_seconds(run_step, repeats, warmup=2)
            rows.append({"model": name, "engine": "torch-eager", "dtype": dtype, "device": device,
                         "infer_images_per_s": infer, "train_images_per_s": train})  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"batch {report['batch']}, {report['size']}x{report['size']}, median of {report['repeats']}",
        "",
        "| model | engine | dtype | device | infer img/s | train img/s | infer ratio jax/torch | train ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    torch_by = {(r["model"], r["dtype"]): r for r in report["rows"] if r["engine"] == "torch-eager"}
    for r in report["rows"]:
        peer = torch_by.get((r["model"], r["dtype"])) if r["engine"] == "jax" else None
        ratios = ["-", "-"] if peer is None else [
            f"{r[k] / peer[k]:.2f}" for k in ("infer_images_per_s", "train_images_per_s")
        ]  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['dtype']} | {r['device']} | {r['infer_images_per_s']:.0f} "
            f"| {r['train_images_per_s']:.0f} | {ratios[0]} | {ratios[1]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: gpu_benchmark.py OUTDIR", file=sys.stderr)
        return 2
    out = pathlib.Path(sys.argv[1])
    batch = int(os.environ.get("GPU_BENCH_BATCH", 256))
    size = int(os.environ.get("GPU_BENCH_SIZE", 224))
    repeats = int(os.environ.get("GPU_BENCH_REPEATS", 10))
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "batch": batch, "size": size,
              "repeats": repeats, "rows": jax_rows(batch, size, repeats) + torch_rows(batch, size, repeats)}  # fmt: skip
    table = markdown(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_benchmark.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
