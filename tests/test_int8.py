"""int8 ONNX export: agreement with the Flax model on real photos, fixed and free shapes, 1 channel, errors."""

import json
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import flax_squeezenet as fsq
from flax_squeezenet.cli import export as export_cli
from flax_squeezenet.compression import rounding
from flax_squeezenet.compression.adaptive import kernel_rows, rows_to_kernel
from flax_squeezenet.deploy import int8_rounding, onnx_int8
from flax_squeezenet.weights.conventions import InputConvention
from tests.conftest import require_shared
from tests.export_helpers import run_cli_error, save_grey_model_as_older_versions_did, write_images

PHOTOS = "data/imagenet-photos"
WEIGHTS = "pretrained/torchvision_squeezenet1_1.ncnn.param"
CALIBRATION_PHOTOS = 100
CHECKED_PHOTOS = 150
# On these 150 photos, with round-to-nearest weights: 96.0% (BENCHMARKS.md, "int8 ONNX": 94.0% on
# 750; AdaRound weights 94.8% on 750, either kind; not measured on these 150). Calibrated on CIFAR-10
# images instead: 64.7% on another 150. Quantizing the final average pool too (94.0% here)
# saturates the logits at the calibration's largest: the maximum difference assertion catches that.
MIN_AGREEMENT = 0.94


def test_int8_agrees_with_flax_on_held_back_photos(tmp_path):
    photos = onnx_int8.image_files(require_shared(PHOTOS))
    order = np.random.default_rng(0).permutation(len(photos))
    calibration = [photos[i] for i in order[:CALIBRATION_PHOTOS]]
    checked = [photos[i] for i in order[CALIBRATION_PHOTOS : CALIBRATION_PHOTOS + CHECKED_PHOTOS]]
    model, variables = fsq.load_pretrained(require_shared(WEIGHTS))
    path = fsq.save_onnx(model, variables, tmp_path / "int8.onnx", int8=True, calibration=calibration)
    images = fsq.preprocess(checked)
    result = onnx_int8.agreement(onnx_int8.flax_logits(model, variables, images), onnx_int8.run_onnx(path, images))
    assert result.top1_agreement >= MIN_AGREEMENT, result
    assert result.max_logit_difference < 3.0, result  # saturated logits differed by 8.7
    proto = onnx.load(path)
    assert sum(node.op_type == "QuantizeLinear" for node in proto.graph.node) > 20
    assert path.stat().st_size < 1.5e6


def random_model(in_channels, num_classes=10, size=32):
    model = fsq.squeezenet1_1(num_classes=num_classes, in_channels=in_channels)
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, in_channels)))
    params = dict(variables["params"])
    params["classifier"] = {**params["classifier"], "kernel": params["classifier"]["kernel"] * 300.0}
    return model, {"params": params}



@pytest.mark.parametrize("input_shape", [None, (2, 1, 32, 32)])
def test_one_channel_int8_in_free_and_fixed_shapes(tmp_path, input_shape):
    model, variables = random_model(in_channels=1)
    calibration = onnx_int8.preprocess_for_model(
        onnx_int8.image_files(write_images(tmp_path / "images", 12, mode="L")),
        channels=1, image_size=32, mean=(0.3,), std=(0.35,),
    )  # fmt: skip
    path = fsq.save_onnx(
        model, variables, tmp_path / "m.onnx", int8=True, calibration=calibration, input_shape=input_shape
    )
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    if input_shape is None:
        assert dims[0].dim_param == "batch" and dims[2].dim_param == "height"
    else:
        assert [d.dim_value for d in dims] == list(input_shape)
    expected = onnx_int8.flax_logits(model, variables, calibration)
    got = onnx_int8.run_onnx(path, calibration)
    assert got.shape == expected.shape == (12, 10)
    assert np.abs(expected).max() > 1.0
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).max()


def test_cli_writes_int8_and_reports_held_back_agreement(tmp_path, capsys):
    folder = write_images(tmp_path / "images", 8)
    output = tmp_path / "out" / "m.onnx"
    code = export_cli.main([
        "--random-init", "--num-classes", "4", "--int8", "--calibration", str(folder), "--weight-rounding", "nearest",
        "--input-shape", "1x3x32x32", "--output", str(output),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "on 2 held-back images: top-1 agreement" in captured.out
    assert "fewer than 30 images: no verdict" in captured.out  # 2 images prove nothing (issue #31)
    assert "warning: calibrating on 6 images: fewer than 64" in captured.err
    proto = onnx.load(output)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    assert any(node.op_type == "QuantizeLinear" for node in proto.graph.node)
    assert [p.name for p in output.parent.iterdir()] == ["m.onnx"]


def test_cli_fixed_shape_float_export(tmp_path, capsys):
    output = tmp_path / "m.onnx"
    code = export_cli.main(["--random-init", "--input-shape", "1x3x48x48", "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    assert "max |difference|" in capsys.readouterr().out
    proto = onnx.load(output)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 48, 48]
    assert not any(node.op_type == "QuantizeLinear" for node in proto.graph.node)




def test_cli_one_channel_weights_need_their_normalisation(tmp_path, capsys):
    model, variables = random_model(in_channels=1, num_classes=3)
    weights = save_grey_model_as_older_versions_did(tmp_path / "export", variables, num_classes=3)
    folder = write_images(tmp_path / "images", 6, mode="L")
    args = ["--weights", str(weights), "--int8", "--calibration", str(folder), "--image-size", "32",
            "--weight-rounding", "nearest"]  # fmt: skip
    assert export_cli.main([*args, "--output", str(tmp_path / "a.onnx")]) == 1
    assert "--mean, --std" in capsys.readouterr().err
    assert export_cli.main([*args, "--mean", "0.3", "--std", "0.35", "--output", str(tmp_path / "b.onnx")]) == 0
    assert "top-1 agreement" in capsys.readouterr().out
    (images,) = onnx.load(tmp_path / "b.onnx").graph.input
    assert images.type.tensor_type.shape.dim[1].dim_value == 1
    assert not (tmp_path / "a.onnx").exists()


def test_missing_onnxruntime_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    folder = write_images(tmp_path / "images", 4)
    error = run_cli_error(capsys, "--int8", "--calibration", str(folder), "--output", str(tmp_path / "m.onnx"))
    assert "pip install 'flax-squeezenet[export]'" in error


def test_input_shape_option(capsys):
    parser = export_cli.build_parser()
    assert parser.parse_args(["--output", "x", "--input-shape", "1x3x224x224"]).input_shape == (1, 3, 224, 224)
    for text in ("1x3x224", "0x3x8x8", "ax3x8x8"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--output", "x", "--input-shape", text])
        assert "NxCxHxW for onnx" in capsys.readouterr().err


def test_agreement_on_few_images_is_no_verdict():
    few, many = onnx_int8.Agreement(2, 1.0, 0.1), onnx_int8.Agreement(100, 0.95, 0.1)
    assert np.allclose(few.top1_interval(), (0.342, 1.0), atol=1e-3)  # Wilson's interval for 2 of 2
    assert np.allclose(many.top1_interval(), (0.888, 0.978), atol=1e-3)  # and for 95 of 100
    assert "(95% interval 34-100%; fewer than 30 images: no verdict" in few.describe()
    assert "top-1 agreement 95.0% (95% interval 89-98%)," in many.describe()
    assert onnx_int8.calibration_warning(onnx_int8.MIN_CALIBRATION_IMAGES) is None
    assert "at least 86 images" in onnx_int8.calibration_warning(6)



def simulated_logits(model, variables, images, simulation):
    """The logits of `model` computing each conv's input and output as `simulation` says."""

    def simulate(next_fun, args, kwargs, context):
        if not (isinstance(context.module, nn.Conv) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        path = "/".join(context.module.path)
        return simulation.outputs(path, next_fun(simulation.inputs(path, args[0]), *args[1:], **kwargs))

    with nn.intercept_methods(simulate):
        return np.asarray(model.apply(variables, images))


@pytest.fixture(scope="module")
def calibrated():
    """A random 3-channel model, 8 images, its uint8 activations calibrated on them, and its weights
    rounded to nearest and by `adaround_int8`."""
    model, variables = random_model(in_channels=3)
    images = np.random.default_rng(2).standard_normal((8, 32, 32, 3)).astype(np.float32)
    simulation = int8_rounding.calibrated_activations(model, variables["params"], images)
    return model, variables, images, simulation, nearest_int8(variables), int8_rounding.adaround_int8(model, variables, images)


def nearest_int8(variables):
    """`variables` with each kernel rounded to the nearest point of its per-channel int8 grid."""

    def round_kernel(path, leaf):
        if path[-1].key != "kernel":
            return leaf
        rows = kernel_rows(np.asarray(leaf))
        scales = rounding.channel_scales(rows)
        return rows_to_kernel(np.round(rows / scales) * scales, leaf.shape)

    return jax.tree_util.tree_map_with_path(round_kernel, variables)


def test_uint8_activations_compute_what_onnxruntime_computes(calibrated):
    """The simulation the weights are fitted in is the int8 ONNX model, to float32 precision."""
    model, variables, images, simulation, nearest, _ = calibrated
    int8_model = onnx_int8.quantize_int8(fsq.to_onnx(model, nearest), images, ranges_from=fsq.to_onnx(model, variables))
    expected = simulated_logits(model, nearest, images, simulation)
    np.testing.assert_allclose(onnx_int8.run_onnx(int8_model, images), expected, atol=1e-3 * np.abs(expected).max())


def test_adaround_weights_survive_quantize_static_and_fit_the_int8_model_closer(calibrated):
    """`quantize_static` keeps the integers `adaround_int8` chose (each channel's extreme at +-127),
    and with int8 activations its weights give logits closer to the float model's than nearest ones."""
    model, variables, images, simulation, nearest, adaround = calibrated
    rounded = fsq.to_onnx(model, adaround)
    int8 = onnx_int8.quantize_int8(rounded, images, ranges_from=fsq.to_onnx(model, variables))
    snapped = {t.name: onnx.numpy_helper.to_array(t) for t in rounded.graph.initializer}
    quantized = {t.name: onnx.numpy_helper.to_array(t) for t in int8.graph.initializer}
    checked = 0
    for node in int8.graph.node:
        if node.op_type == "DequantizeLinear" and quantized.get(node.input[0], np.zeros(0)).dtype == np.int8:
            integers, scales = quantized[node.input[0]], quantized[node.input[1]]
            kernel = snapped[node.input[0].removesuffix("_quantized")]
            np.testing.assert_array_equal(integers, np.round(kernel / scales.reshape(-1, 1, 1, 1)))
            assert np.abs(integers).max(axis=(1, 2, 3)).min() == 127
            checked += 1
    assert checked == 26
    reference = np.asarray(model.apply(variables, images))
    error = {name: np.mean((simulated_logits(model, weights, images, simulation) - reference) ** 2)
             for name, weights in (("adaround", adaround), ("nearest", nearest))}  # fmt: skip
    assert error["adaround"] < 0.5 * error["nearest"], error


def test_uint8_activations_round_each_conv_input_over_its_calibration_range(calibrated):
    _, _, images, simulation, _, _ = calibrated
    assert simulation.input_ranges["conv1"] == pytest.approx((images.min(), images.max()))  # the image itself
    low, high = simulation.input_ranges["fire2/squeeze"]
    assert low == 0.0 and high > 0  # after a ReLU and a pool
    rounded = np.asarray(simulation.inputs("conv1", jnp.asarray(images)))
    step = (images.max() - images.min()) / 255
    assert len(np.unique(rounded)) <= 256 and np.abs(rounded - images).max() <= step / 2 + 1e-6
    assert np.isclose(rounded, 0.0, atol=1e-6).any()  # zero is exactly representable, as for onnxruntime
    outputs = np.asarray(simulation.outputs("conv1", jnp.asarray(images)))
    assert outputs.min() == 0.0 and outputs.max() <= simulation.output_highs["conv1"] + 1e-6  # the ReLU's range


def test_adaround_beats_round_to_nearest_on_the_layer_output():
    rng = np.random.default_rng(3)
    inputs = rng.standard_normal((4000, 48)) @ rng.standard_normal((48, 48))  # correlated, as patches are
    weights = (rng.standard_normal((16, 48)) * 0.1).astype(np.float32)
    bias = np.zeros(16, np.float32)
    moments = rounding.InputMoments.from_rows(inputs)
    paired = rounding.PairedMoments(moments, np.zeros_like(moments.covariance), moments.mean)
    snapped, corrected = rounding.round_to_int8(weights, bias, paired)
    scales = rounding.channel_scales(weights)
    nearest = np.round(weights / scales) * scales

    def output_error(candidate, candidate_bias):
        return np.mean((inputs @ weights.T - inputs @ candidate.T - candidate_bias) ** 2)

    levels = snapped / scales
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    assert np.all(np.abs(np.round(levels)).max(1) == 127)
    assert output_error(snapped, corrected) < 0.7 * output_error(nearest, np.zeros(16))


def test_save_onnx_int8_calibrates_in_the_weights_convention_and_records_it(tmp_path, monkeypatch):
    model, variables = random_model(in_channels=3)
    folder = write_images(tmp_path / "images", 4)
    caffe = InputConvention(mean=(104 / 255, 117 / 255, 123 / 255), std=(1 / 255,) * 3, resize_size=40, crop_size=32,
                            channel_order="BGR")  # fmt: skip
    seen = []
    monkeypatch.setattr(onnx_int8, "quantize_int8", lambda proto, images, **_: seen.append(images) or proto)
    path = fsq.save_onnx(model, variables, tmp_path / "m.onnx", preprocessing=caffe, int8=True, calibration=folder)
    np.testing.assert_array_equal(seen[0], caffe.preprocess(onnx_int8.image_files(folder)))
    properties = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(properties["preprocessing"]) == caffe.to_dict()


def test_int8_preprocessing_metadata_and_option_errors(tmp_path):
    model, variables = random_model(in_channels=3)
    images = np.random.default_rng(4).standard_normal((4, 32, 32, 3)).astype(np.float32)
    convention = InputConvention(resize_size=32, crop_size=32)
    path = fsq.save_onnx(model, variables, tmp_path / "m.onnx", preprocessing=convention, int8=True,
                         calibration=images)  # fmt: skip
    properties = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(properties["preprocessing"]) == convention.to_dict()
    with pytest.raises(ValueError, match="int8=True and calibration go together"):
        fsq.save_onnx(model, variables, tmp_path / "x.onnx", int8=True)
    gray, gray_variables = random_model(in_channels=1)
    with pytest.raises(ValueError, match="1-channel model needs the input convention"):
        fsq.save_onnx(gray, gray_variables, tmp_path / "x.onnx", int8=True, calibration=tmp_path)
    with pytest.raises(ValueError, match="does not match the input convention's crop size 224"):
        fsq.save_onnx(model, variables, tmp_path / "x.onnx", int8=True, calibration=tmp_path,
                      input_shape=(1, 3, 32, 32))  # fmt: skip
    assert not (tmp_path / "x.onnx").exists()


def test_save_onnx_adaround_quantizes_the_rounded_weights_with_the_float_models_ranges(tmp_path, monkeypatch):
    model, variables = random_model(in_channels=3)
    images = np.random.default_rng(6).standard_normal((4, 32, 32, 3)).astype(np.float32)
    calls = []
    monkeypatch.setattr(int8_rounding, "adaround_int8", lambda m, v, i: calls.append(i) or nearest_int8(v))
    record = lambda proto, i, ranges_from=None: calls.append((proto, ranges_from)) or proto  # noqa: E731
    monkeypatch.setattr(onnx_int8, "quantize_int8", record)
    fsq.save_onnx(model, variables, tmp_path / "m.onnx", int8=True, calibration=images, weight_rounding="adaround",
                  input_shape=(4, 3, 32, 32))  # fmt: skip
    fitted_on, (quantized, ranges_from) = calls
    np.testing.assert_array_equal(fitted_on, images)
    kernels = lambda proto: {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}  # noqa: E731
    expected = onnx_int8.with_fixed_input_shape(fsq.to_onnx(model, nearest_int8(variables)), (4, 3, 32, 32))
    assert quantized.graph.input[0] == ranges_from.graph.input[0] == expected.graph.input[0]
    for name, kernel in kernels(expected).items():
        np.testing.assert_array_equal(kernels(quantized)[name], kernel)
    float_kernel = np.asarray(variables["params"]["conv1"]["kernel"]).transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(kernels(ranges_from)["conv1/kernel"], float_kernel)  # the float model's ranges
    with pytest.raises(ValueError, match="expected weight_rounding one of nearest, adaround"):
        fsq.save_onnx(model, variables, tmp_path / "x.onnx", int8=True, calibration=images, weight_rounding="floor")
