"""The models' speed tricks compute the same numbers as the plain formulation, forward and backward."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax_squeezenet as fsq
from flax_squeezenet.zoo import ops

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def plain_max_pool(x):
    """3x3/2 ceil-mode max-pooling as reduce_window (nn.max_pool), whose gradient XLA derives."""
    pads = ops.ceil_mode_padding(x)[1:3]
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)


def plain_squeezenet(model, params, x):
    """`model`'s eval-mode logits with every layer a plain convolution or reduce_window."""

    def conv(x, leaf, stride=1, pad=0):
        y = jax.lax.conv_general_dilated(x, leaf["kernel"], (stride, stride), [(pad, pad)] * 2,
                                         dimension_numbers=DIMENSIONS)  # fmt: skip
        return y + leaf["bias"]

    fire = 2
    for stage in model.stages:
        if isinstance(stage, fsq.ConvStage):
            x = jax.nn.relu(conv(x, params["conv1"], stage.stride))
        elif isinstance(stage, fsq.PoolStage):
            x = plain_max_pool(x)
        else:
            p = params[f"fire{fire}"]
            s = jax.nn.relu(conv(x, p["squeeze"]))
            y = jnp.concatenate([jax.nn.relu(conv(s, p["expand1x1"])), jax.nn.relu(conv(s, p["expand3x3"], pad=1))], -1)
            if model.bypass != "none" and y.shape[-1] == x.shape[-1]:
                y = y + x
            elif model.bypass == "complex":
                y = y + conv(x, params[f"fire{fire}_bypass"])
            x, fire = y, fire + 1
    return jnp.mean(jax.nn.relu(conv(x, params["classifier"], pad=model.classifier_padding)), axis=(1, 2))


@pytest.mark.parametrize("shape", [(2, 17, 17, 3), (1, 24, 31, 5), (2, 55, 55, 4)])
def test_max_pool_matches_reduce_window_with_ties(shape):
    # Values on a coarse grid and ReLU zeros make many windows hold several equal maxima: the
    # gradient must go to the same (first, row-major) one as reduce_window's.
    x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(0), shape) * 2) / 2)
    fast, fast_vjp = jax.vjp(ops.max_pool_3x3_ceil, x)
    plain, plain_vjp = jax.vjp(plain_max_pool, x)
    np.testing.assert_array_equal(fast, plain)
    cotangent = jax.random.normal(jax.random.key(1), fast.shape)
    np.testing.assert_allclose(fast_vjp(cotangent)[0], plain_vjp(cotangent)[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "dtype, tolerance, padding",
    [(jnp.float32, 1e-5, "VALID"), (jnp.bfloat16, 2e-2, "VALID"), (jnp.float32, 1e-5, ((1, 1), (2, 0)))],
)
def test_1x1_conv_as_matmul_matches_convolution(dtype, tolerance, padding):
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 16), dtype)
    kernel = jax.random.normal(jax.random.key(1), (1, 1, 16, 24), dtype)

    def plain(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMENSIONS)

    def fast(x, kernel):
        return ops.conv_1x1_as_matmul(x, kernel, (1, 1), padding)

    cotangent = jax.random.normal(jax.random.key(2), plain(x, kernel).shape, dtype)
    (y_fast, vjp_fast), (y_plain, vjp_plain) = jax.vjp(fast, x, kernel), jax.vjp(plain, x, kernel)
    for got, expected in [(y_fast, y_plain), *zip(vjp_fast(cotangent), vjp_plain(cotangent))]:
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(np.float32(got), np.float32(expected), rtol=tolerance, atol=tolerance)


def test_1x1_conv_as_matmul_refuses_other_kernels():
    with pytest.raises(ValueError, match="1x1"):
        ops.conv_1x1_as_matmul(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), (1, 1), "VALID")


@pytest.mark.parametrize(
    "name, options",
    [
        ("squeezenet1_1", {}),
        ("squeezenet1_0", {}),
        ("squeezenet1_0_complex_bypass", {}),
        # Equal widths put an identity bypass on the Fire modules before both pools.
        ("squeezenet_metaparameters", {"incr_e": 0, "bypass": "simple"}),
        ("squeezenet1_0", {"classifier_padding": 1}),
    ],
)
def test_model_and_its_gradients_match_the_plain_formulation(name, options):
    model = fsq.create_model(name, num_classes=6, **options)
    x = jax.random.normal(jax.random.key(0), (2, 37, 37, 3))
    params = model.init(jax.random.key(1), x)["params"]
    labels = jnp.array([1, 4])

    def loss(forward, params):
        logits = forward(params)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)), logits

    (fast_loss, fast_logits), fast_grads = jax.jit(jax.value_and_grad(
        lambda p: loss(lambda p: model.apply({"params": p}, x), p), has_aux=True))(params)  # fmt: skip
    (plain_loss, plain_logits), plain_grads = jax.jit(jax.value_and_grad(
        lambda p: loss(lambda p: plain_squeezenet(model, p, x), p), has_aux=True))(params)  # fmt: skip
    np.testing.assert_allclose(fast_logits, plain_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-6)
    assert jax.tree_util.tree_structure(fast_grads) == jax.tree_util.tree_structure(plain_grads)
    for got, expected in zip(jax.tree_util.tree_leaves(fast_grads), jax.tree_util.tree_leaves(plain_grads)):
        scale = float(jnp.abs(expected).max()) or 1.0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)


def test_compiler_options_change_kernels_not_results():
    options = fsq.compiler_options(jnp.float32)
    # On CPU with this jaxlib the benchmarked option must be in effect (an empty dict would mean
    # the option was dropped and BENCHMARKS.md's figures no longer describe what runs).
    assert options, "expected XLA:CPU options for float32 on this jaxlib"
    assert fsq.compiler_options(jnp.bfloat16) == {}
    model = fsq.squeezenet1_0(num_classes=7)
    x = jax.random.normal(jax.random.key(0), (2, 45, 45, 3))
    params = model.init(jax.random.key(1), x)["params"]

    def loss_and_logits(params):
        logits = model.apply({"params": params}, x)
        return jnp.sum(jax.nn.log_softmax(logits)[:, 3]), logits

    value_and_grad = jax.value_and_grad(loss_and_logits, has_aux=True)
    tuned, default = jax.jit(value_and_grad, compiler_options=options), jax.jit(value_and_grad)
    assert "ynn_fusion" in default.lower(params).compile().as_text()
    assert tuned.lower(params).compile().as_text() != default.lower(params).compile().as_text()
    (_, tuned_logits), tuned_grads = tuned(params)
    (_, default_logits), default_grads = default(params)
    np.testing.assert_allclose(tuned_logits, default_logits, rtol=1e-5, atol=1e-6)
    for got, expected in zip(jax.tree_util.tree_leaves(tuned_grads), jax.tree_util.tree_leaves(default_grads)):
        scale = float(jnp.abs(expected).max()) or 1.0
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale)
