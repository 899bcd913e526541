"""NNX against linen, in one process: jit inference and an SGD train step on the same parameters.

    python bench/nnx_speed.py --model squeezenet1_1 --batch 8 --size 224 --repeats 10

Engines: linen (`jax.jit(module.apply)` with `compiler_options`), nnx-split (`jax.jit` over the
state of `nnx.split`, the functional form, with `compiler_options`), nnx-jit (`nnx.jit`, which
takes no compiler options) and linen-default (linen without them, nnx-jit's baseline). Prints a
JSON line per measurement (median seconds over --repeats after a warm-up, and baseline / engine,
so above 1 means faster than linen) and those ratios' medians over --rounds rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import flax_squeezenet as fsq
import flax_squeezenet.nnx as fsq_nnx


def median_seconds(run: Callable[[], jax.Array], repeats: int) -> float:
    jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loss_of(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def engines(module: fsq.SqueezeNet, images: jax.Array, labels: jax.Array) -> dict[str, Callable[[], jax.Array]]:
    """name -> a call running one inference or one train step (dropout off, SGD).

    "*/linen" and "*/nnx-split" are jitted with `compiler_options`; `nnx.jit` takes no compiler
    options, so "*/nnx-jit" is compared with "*/linen-default", linen jitted without them.
    """
    options = fsq.compiler_options(module.dtype)
    size = module.min_input_size
    variables = module.init(jax.random.key(0), jnp.zeros((1, size, size, module.in_channels)))
    tx = optax.sgd(1e-3)
    model = fsq_nnx.to_nnx(module, variables)
    model.eval()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def linen_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: loss_of(module.apply({"params": p}, images), labels))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def nnx_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: loss_of(m(images), labels))(model)
        optimizer.update(model, grads)
        return loss

    def split_step(state):
        model, optimizer = nnx.merge(graphdef, state)
        loss = nnx_step(model, optimizer)
        return nnx.state((model, optimizer)), loss

    def split_infer(state):
        model, _ = nnx.merge(graphdef, state)
        return model(images)

    linen_apply = {name: jax.jit(module.apply, **kw) for name, kw in (("linen", {"compiler_options": options}), ("linen-default", {}))}
    linen_steps = {name: jax.jit(linen_step, **kw) for name, kw in (("linen", {"compiler_options": options}), ("linen-default", {}))}
    split_infer_jit = jax.jit(split_infer, compiler_options=options)
    split_step_jit = jax.jit(split_step, compiler_options=options)
    nnx_infer = nnx.jit(lambda m, x: m(x))
    nnx_step_jit = nnx.jit(nnx_step)
    carried = {name: [variables["params"], tx.init(variables["params"])] for name in linen_steps}
    split_state = [state]

    def run_linen_step(name):
        *carried[name][:2], loss = linen_steps[name](*carried[name])
        return loss

    def run_split_step():
        split_state[0], loss = split_step_jit(split_state[0])
        return loss

    return {
        "infer/linen": lambda: linen_apply["linen"](variables, images),
        "infer/nnx-split": lambda: split_infer_jit(state),
        "infer/linen-default": lambda: linen_apply["linen-default"](variables, images),
        "infer/nnx-jit": lambda: nnx_infer(model, images),
        "train/linen": lambda: run_linen_step("linen"),
        "train/nnx-split": run_split_step,
        "train/linen-default": lambda: run_linen_step("linen-default"),
        "train/nnx-jit": lambda: nnx_step_jit(model, optimizer),
    }


BASELINE = {"nnx-split": "linen", "nnx-jit": "linen-default"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    module = fsq.create_model(args.model)
    images = jax.random.normal(jax.random.key(1), (args.batch, args.size, args.size, 3))
    labels = jnp.arange(args.batch) % module.num_classes
    runs = engines(module, images, labels)
    ratios: dict[str, list[float]] = {name: [] for name in runs if name.split("/")[1] in BASELINE}
    for round_index in range(args.rounds):
        seconds = {name: median_seconds(run, args.repeats) for name, run in runs.items()}
        for name, value in seconds.items():
            task, engine = name.split("/")
            record = {"round": round_index, "engine": name, "seconds": round(value, 5)}
            if engine in BASELINE:
                ratio = seconds[f"{task}/{BASELINE[engine]}"] / value
                ratios[name].append(ratio)
                record[f"{BASELINE[engine]}_over_engine"] = round(ratio, 3)
            print(json.dumps(record))
    print(json.dumps({"model": args.model, "batch": args.batch, "size": args.size,
                      "median_linen_over_engine": {k: round(statistics.median(v), 3) for k, v in ratios.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
