"""The ONNX export computes what the Flax model computes, for any batch size and image size."""

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import pytest

import flax_squeezenet as fsq
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.deploy.onnx import save_onnx, to_onnx
from flax_squeezenet.weights.pretrained import save_pretrained


def variables_with_large_logits(model, size):
    """Random variables whose logits are of order 1 (the default classifier init makes them ~0.01)."""
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    params = dict(variables["params"])
    params["classifier"] = {**params["classifier"], "kernel": params["classifier"]["kernel"] * 300.0}
    return {"params": params}


def run_onnx(path, images_nhwc):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))})
    return logits


@pytest.mark.parametrize(
    "name", ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_simple_bypass", "squeezenet1_0_complex_bypass"]
)
def test_onnxruntime_matches_flax_at_two_batch_sizes_and_an_odd_size(name, tmp_path):
    model = fsq.create_model(name, num_classes=7)
    variables = variables_with_large_logits(model, 48)
    path = save_onnx(model, variables, tmp_path / "model.onnx")
    rng = np.random.default_rng(1)
    for batch, size in [(1, 48), (3, 48), (2, 67)]:
        images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
        expected = np.asarray(model.apply(variables, images))
        assert np.abs(expected).max() > 0.1, "logits too small for the comparison to mean anything"
        np.testing.assert_allclose(run_onnx(path, images), expected, rtol=1e-4, atol=1e-4)


def test_onnxruntime_matches_flax_with_the_classifier_padding(tmp_path):
    model = fsq.squeezenet1_0(num_classes=7, classifier_padding=1)
    variables = variables_with_large_logits(model, 48)
    head = variables["params"]["classifier"]
    bias = jax.random.normal(jax.random.key(1), head["bias"].shape)  # a border of relu(bias) is averaged in
    variables = {"params": {**variables["params"], "classifier": {**head, "bias": bias}}}
    path = save_onnx(model, variables, tmp_path / "padded.onnx")
    images = np.random.default_rng(3).standard_normal((2, 51, 51, 3)).astype(np.float32)
    expected = np.asarray(model.apply(variables, images))
    assert not np.allclose(expected, model.clone(classifier_padding=0).apply(variables, images), atol=1e-2)
    np.testing.assert_allclose(run_onnx(path, images), expected, rtol=1e-4, atol=1e-4)


def test_export_has_a_dynamic_batch_and_the_fixed_op_set():
    model = fsq.squeezenet1_1(num_classes=5)
    proto = to_onnx(model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    (images,) = proto.graph.input
    assert images.type.tensor_type.shape.dim[0].dim_param == "batch"
    (logits,) = proto.graph.output
    assert [d.dim_value for d in logits.type.tensor_type.shape.dim[1:]] == [5]
    ops = {node.op_type for node in proto.graph.node}
    assert ops == {"Conv", "Relu", "MaxPool", "Concat", "GlobalAveragePool", "Flatten"}
    assert all(
        attribute.i == 1
        for node in proto.graph.node if node.op_type == "MaxPool"
        for attribute in node.attribute if attribute.name == "ceil_mode"
    )  # fmt: skip
    onnx.checker.check_model(proto)


def test_to_onnx_names_missing_parameters():
    model = fsq.squeezenet1_1()
    params = dict(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
    del params["fire5"]
    with pytest.raises(ValueError, match="fire5/squeeze"):
        to_onnx(model, {"params": params})


def test_cli_exports_a_random_variant_and_checks_it(tmp_path, capsys):
    output = tmp_path / "sub" / "bypass.onnx"
    code = export_cli.main([
        "--format", "onnx", "--model", "squeezenet1_0_simple_bypass", "--random-init",
        "--num-classes", "10", "--image-size", "35", "--output", str(output),
    ])  # fmt: skip
    assert code == 0
    assert "max |difference|" in capsys.readouterr().out
    assert onnx.load(str(output)).graph.output[0].type.tensor_type.shape.dim[1].dim_value == 10
    assert [p.name for p in output.parent.iterdir()] == ["bypass.onnx"]  # no temporary left behind


def test_cli_exports_saved_weights(tmp_path):
    model = fsq.squeezenet1_1(num_classes=4)
    variables = variables_with_large_logits(model, 32)
    save_pretrained(tmp_path / "ckpt", variables, model="squeezenet1_1", num_classes=4)
    output = tmp_path / "saved.onnx"
    code = export_cli.main(["--weights", str(tmp_path / "ckpt"), "--image-size", "33", "--output", str(output)])
    assert code == 0
    images = np.random.default_rng(2).standard_normal((2, 33, 33, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(output, images), model.apply(variables, images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "squeezenet1_0_complex_bypass"], "no published weights"),
        (["--model", "squeezenet1_1", "--random-init", "--image-size", "10"], "at least 17"),
        (["--weights", "/nonexistent/weights.pth"], "nonexistent"),
    ],
)
def test_cli_errors_are_one_line_on_stderr(argv, message, tmp_path, capsys):
    output = tmp_path / "never.onnx"
    assert export_cli.main([*argv, "--output", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("squeezenet-export: error:") and message in error
    assert not output.exists()
