"""The summary table: its totals are `count_params` and XLA's cost analysis of the whole model."""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import flax_squeezenet as fsq
import flax_squeezenet.nnx as fsq_nnx
from flax_squeezenet.cli import info
from flax_squeezenet.zoo.summary import summarize


def whole_model_cost(module, input_shape):
    """(parameter count, XLA FLOPs) of the linen model's forward pass, compiled in one piece."""
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(input_shape))
    compiled = jax.jit(module.apply).lower(variables, jax.ShapeDtypeStruct(input_shape, jnp.float32)).compile()
    return fsq.count_params(variables), compiled.cost_analysis()["flops"]


@pytest.mark.parametrize(
    "module, input_shape",
    [
        (fsq.squeezenet1_1(), (1, 224, 224, 3)),
        (fsq.squeezenet1_0_complex_bypass(), (1, 224, 224, 3)),
        (fsq.squeezenet1_0_simple_bypass(num_classes=10, in_channels=1), (2, 64, 64, 1)),
        (fsq.squeezenet_metaparameters(pct3x3=0.25, sr=0.25), (1, 96, 80, 3)),
        (fsq.squeezenet1_0(num_classes=10, classifier_padding=1), (1, 64, 64, 3)),
    ],
)
def test_totals_equal_count_params_and_xla_cost_analysis(module, input_shape):
    table = summarize(module, input_shape)
    params, flops = whole_model_cost(module, input_shape)
    assert table.total_params == params
    # XLA sums its cost analysis in float32 (a few units in the 7th digit); the smallest layer
    # (the average pool) is 7e-5 of the total, so a missing or extra layer still fails.
    assert table.total_flops == pytest.approx(flops, rel=1e-6)
    assert table.layers[-1].output_shape == (input_shape[0], module.num_classes)


def test_readme_variants_table_numbers():
    readme = {"squeezenet1_0": (1_248_424, "1.61"), "squeezenet1_1": (1_235_496, "0.68"),
              "squeezenet1_0_complex_bypass": (1_589_672, "2.31")}  # fmt: skip
    for name, (params, gflops) in readme.items():
        table = summarize(fsq.create_model(name))
        assert (table.total_params, f"{table.total_flops / 1e9:.2f}") == (params, gflops)


def test_nnx_model_gives_the_same_table_and_rows_are_in_network_order():
    linen = summarize(fsq.squeezenet1_1(num_classes=10), (1, 64, 64, 3))
    model = nnx.eval_shape(lambda: fsq_nnx.squeezenet1_1(num_classes=10, rngs=nnx.Rngs(0)))
    assert summarize(model, (1, 64, 64, 3)) == linen
    names = [layer.name for layer in linen.layers]
    assert names == [layer.name for layer in fsq.squeezenet1_1().plan] + ["avgpool"]
    assert names == ["conv1", "pool1", "fire2", "fire3", "pool3", "fire4", "fire5", "pool5",
                     "fire6", "fire7", "fire8", "fire9", "classifier", "avgpool"]  # fmt: skip
    assert linen.layers[names.index("fire2")].output_shape == (1, 15, 15, 128)


def test_padded_classifier_row_and_bypass_kinds_come_from_the_plan():
    table = summarize(fsq.squeezenet1_0_complex_bypass(num_classes=10, classifier_padding=1), (1, 64, 64, 3))
    rows = {layer.name: layer for layer in table.layers}
    assert rows["classifier"].kind == "Conv 1x1/1 pad 1 + ReLU"
    assert rows["classifier"].output_shape == (1, 5, 5, 10), "the 3x3 map padded by 1 on each side"
    assert rows["fire2"].kind == "Fire 16/64/64 + 1x1 bypass"
    assert rows["fire3"].kind == "Fire 16/64/64 + identity bypass"
    assert rows["fire2"].params == 96 * 16 + 16 + 16 * 64 + 64 + 16 * 9 * 64 + 64 + 96 * 128 + 128


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="at least 17 pixels"):
        summarize(fsq.squeezenet1_1(), (1, 16, 16, 3))


def test_info_command_prints_the_table(capsys):
    assert info.main(["--model", "squeezenet1_0", "--image-size", "224"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^total .* 1,248,424 +1,61\d,\d{3},\d{3}$", out, re.MULTILINE), out
    assert out.count("Fire ") == 8
    assert info.main(["--model", "squeezenet1_1", "--image-size", "8"]) == 1
    assert "at least 17 pixels" in capsys.readouterr().err
    assert info.main(["--model", "squeezenet1_0", "--image-size", "227", "--classifier-padding", "1"]) == 0
    assert re.search(r"^classifier +Conv 1x1/1 pad 1 \+ ReLU +\(1, 15, 15, 1000\)", capsys.readouterr().out, re.MULTILINE)
    assert info.main(["--model", "squeezenet1_0", "--classifier-padding", "-1"]) == 1
    assert "classifier_padding >= 0" in capsys.readouterr().err
