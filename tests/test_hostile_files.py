"""Weights files crafted to mislead (issue #31, the readers): declared sizes are checked against the
model before memory is taken, formats are told by content, and broken metadata is one line naming
the file."""

import hashlib
import json
import pathlib
import shutil
import struct
import tracemalloc

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GREY, require_shared
from PIL import Image

from flax_squeezenet import load_pretrained, save_pretrained
from flax_squeezenet.cli import predict as predict_cli
from flax_squeezenet.weights.compressed import CompressedModel, SharedKernel
from flax_squeezenet.weights.pretrained import input_convention
from flax_squeezenet.weights.sqz import encode_compressed
from flax_squeezenet.zoo import layers
from flax_squeezenet.zoo.models import MODELS, create_model

PREAMBLE = struct.Struct("<8sHHI")
SMALL_KWARGS = {"in_channels": 1, "num_classes": 10}
PEAK_BYTES = 16 << 20  # the refusals below read nothing by the declared sizes; the small model is 3 MB
NCNN = "pretrained/torchvision_squeezenet1_1.ncnn.param"
PAPER_FILE = "pretrained/deepcompression_squeezenet1_0.net"


def random_params(model: str, **kwargs) -> dict[str, np.ndarray]:
    """Flat float32 params of the right shapes, without initialising a module."""
    rng = np.random.default_rng(0)
    params = {}
    for conv in layers.convolutions(create_model(model, **kwargs).plan):
        params[f"{conv.name}/kernel"] = rng.normal(0, 0.05, conv.shape).astype(np.float32).transpose(2, 3, 1, 0)
        params[f"{conv.name}/bias"] = rng.normal(0, 0.05, conv.out_channels).astype(np.float32)
    return params


@pytest.mark.parametrize("model", sorted(MODELS))
def test_model_shapes_are_the_modules_parameters(model):
    """The shapes every reader checks against are those `init` gives (for a non-default size too)."""
    from flax_squeezenet.zoo import sizes

    module = create_model(model, in_channels=1, num_classes=7)
    size = module.min_input_size
    params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 1)))["params"]
    flat = {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(params, sep="/").items()}
    assert sizes.model_shapes(model, {"in_channels": 1, "num_classes": 7}, "test") == flat


@pytest.fixture(scope="module")
def sqz_bytes() -> bytes:
    """A 1-channel, 10-class squeezenet1_1 `.sqz`, its fire2 squeeze kernel shared at 1 bit."""
    leaves: dict = random_params("squeezenet1_1", **SMALL_KWARGS)
    indices = (np.arange(leaves["fire2/squeeze/kernel"].size) % 3 == 0).astype(np.uint8)
    leaves["fire2/squeeze/kernel"] = SharedKernel(np.array([0.0, 0.5], np.float32),
                                                  indices.reshape(leaves["fire2/squeeze/kernel"].shape))  # fmt: skip
    return encode_compressed(CompressedModel("squeezenet1_1", dict(SMALL_KWARGS), "torchvision", leaves, GREY))


def with_header(data: bytes, edit) -> bytes:
    """The `.sqz` `data` with its header replaced by `edit(header)` and a valid checksum."""
    magic, version, zero, length = PREAMBLE.unpack_from(data)
    header = edit(json.loads(data[PREAMBLE.size : PREAMBLE.size + length]))
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = PREAMBLE.pack(magic, version, zero, len(encoded)) + encoded + data[PREAMBLE.size + length : -32]
    return body + hashlib.sha256(body).digest()


def set_entry(header: dict, parameter: str, **values) -> dict:
    next(item for item in header["parameters"] if item["path"] == parameter).update(values)
    return header


def refusal(source, *fragments) -> str:
    """The one-line ValueError `load_pretrained(source)` raises, checked to name `fragments`, with
    the most memory Python allocated meanwhile below PEAK_BYTES."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as error:
            load_pretrained(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(error.value)
    assert "\n" not in message and all(fragment in message for fragment in fragments), message
    assert peak < PEAK_BYTES, f"refusing {source} allocated {peak} bytes"
    return message


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "grey.png"
    Image.new("L", (64, 64), 128).save(path)
    return str(path)


# --- Memory: declared sizes are the model's, or refused before anything is allocated by them ------


def test_huge_declared_shape_in_a_sqz_is_refused_by_predict_without_allocating(sqz_bytes, tmp_path, image, capsys):
    """The issue's 6 GB case, at 64 M weights: a shared kernel whose declared shape the model does not have."""
    path = tmp_path / "huge.sqz"
    path.write_bytes(with_header(sqz_bytes, lambda h: set_entry(h, "fire2/squeeze/kernel", shape=[1, 1, 1 << 22, 16])))
    tracemalloc.start()
    try:
        status = predict_cli.main([image, "--weights", str(path)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert str(path) in captured.err and "fire2/squeeze/kernel" in captured.err and "(1, 1, 64, 16)" in captured.err
    assert peak < PEAK_BYTES, f"reading a {path.stat().st_size}-byte file allocated {peak} bytes"


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda h: set_entry(h, "fire2/squeeze/kernel", entries=1 << 40), ["fire2/squeeze/kernel", "stored entries"]),
        (lambda h: {**h, "num_classes": 1 << 40, "model_kwargs": {"in_channels": 1, "num_classes": 1 << 40}},
         ["parameters; at most"]),
        (lambda h: {**h, "model_kwargs": {**h["model_kwargs"], "in_channels": 1 << 20}}, ["in_channels 1", "1048576"]),
    ],
    ids=["entries", "num-classes", "in-channels"],
)
def test_declared_counts_beyond_the_model_are_refused(sqz_bytes, tmp_path, edit, fragments):
    path = tmp_path / "crafted.sqz"
    path.write_bytes(with_header(sqz_bytes, edit))
    refusal(path, str(path), *fragments)


def test_pth_tensor_declared_larger_than_the_model_is_refused_before_reading(tmp_path):
    torch = pytest.importorskip("torch", reason="torch writes the reference .pth files")
    from test_torch_parity import random_reference

    state = random_reference("1_1", 0).state_dict()
    # A stride-0 view: torch stores one element, the pickle declares 16 M of them.
    state["features.3.squeeze.weight"] = torch.zeros(1, 1, 1, 1).expand(16, 1 << 20, 1, 1)
    torch.save(state, tmp_path / "expanded.pth")
    refusal(tmp_path / "expanded.pth", "expanded.pth", "fire2/squeeze/kernel", "(1, 1, 64, 16)")


def test_ncnn_weight_count_beyond_the_model_is_refused_before_the_bin_is_read(tmp_path):
    param = require_shared(NCNN)
    text = param.read_text()
    squeeze = next(line for line in text.splitlines() if line.startswith("Convolution") and " 6=1024" in line)
    (tmp_path / "m.param").write_text(text.replace(squeeze, squeeze.replace(" 6=1024", " 6=1024000"), 1))
    shutil.copy(param.with_suffix(".bin"), tmp_path / "m.bin")
    refusal(tmp_path / "m.param", "m.param", "fire2/squeeze/kernel", "(1, 1, 64, 16)")


def test_net_entry_count_beyond_its_kernel_is_refused(tmp_path):
    data = bytearray(require_shared(PAPER_FILE).read_bytes())
    data[0:4] = (1 << 31).to_bytes(4, "little")  # conv1's stored entries
    (tmp_path / "paper.net").write_bytes(bytes(data))
    refusal(tmp_path / "paper.net", "paper.net", "stored entries")


# --- Formats by magic number ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["weights", "weights.pth", "weights.net"])
def test_a_sqz_under_another_name_loads_by_its_magic_number(sqz_bytes, tmp_path, name):
    (tmp_path / "good.sqz").write_bytes(sqz_bytes)
    (tmp_path / name).write_bytes(sqz_bytes)
    module, variables = load_pretrained(tmp_path / name)
    _, expected = load_pretrained(tmp_path / "good.sqz")
    assert (module.in_channels, module.num_classes) == (1, 10)
    assert input_convention(tmp_path / name) == GREY
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], expected["params"]["conv1"]["kernel"])


def test_ncnn_param_under_another_suffix_is_told_by_its_magic_line(tmp_path):
    param = require_shared(NCNN)
    (tmp_path / "m.param").write_bytes(param.read_bytes())
    shutil.copy(param.with_suffix(".bin"), tmp_path / "m.bin")
    module, _ = load_pretrained(tmp_path / "m.bin")
    assert module.num_classes == 1000


# --- .sqz headers that name nothing sensible ------------------------------------------------------


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda h: [h], "header is a JSON list"),
        (lambda h: {k: v for k, v in h.items() if k != "parameters"}, "lacks 'parameters'"),
        (lambda h: set_entry(h, "conv1/bias", path="conv9/bias"), "parameter conv1/bias is missing"),
        (lambda h: {**h, "model_kwargs": {**h["model_kwargs"], "colour": "blue"}}, "'colour'"),
        (lambda h: {**h, "model": "resnet50"}, "unknown model 'resnet50'"),
        (lambda h: b"\xff\xfe not json", "not UTF-8 JSON"),
    ],
    ids=["list", "no-parameters", "unknown-path", "unknown-option", "unknown-model", "not-utf8"],
)
def test_broken_sqz_headers_are_one_line_naming_the_file(sqz_bytes, tmp_path, edit, fragment):
    path = tmp_path / "broken.sqz"
    path.write_bytes(with_header(sqz_bytes, edit))
    refusal(path, str(path), fragment)


def test_broken_sqz_header_through_predict_is_one_line(sqz_bytes, tmp_path, image, capsys):
    path = tmp_path / "list.sqz"
    path.write_bytes(with_header(sqz_bytes, lambda h: [h]))
    assert predict_cli.main([image, "--weights", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and str(path) in captured.err, captured.err


# --- safetensors directories: config.json and the tensors agree -----------------------------------


@pytest.fixture
def hub(tmp_path) -> pathlib.Path:
    """A squeezenet1_1 (3 channels, 1000 classes) saved in the safetensors layout."""
    params = flax.traverse_util.unflatten_dict(random_params("squeezenet1_1"), sep="/")
    return save_pretrained(tmp_path / "hub", {"params": params}, model="squeezenet1_1", format="safetensors")


def edit_config(directory: pathlib.Path, **values) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **values}))


@pytest.mark.parametrize(
    "values, fragments",
    [
        ({"num_classes": 10}, ["classifier/kernel", "(1, 1, 512, 1000)", "num_classes 10", "(1, 1, 512, 10)"]),
        ({"in_channels": 1}, ["conv1/kernel", "(3, 3, 3, 64)", "in_channels 1", "(3, 3, 1, 64)"]),
    ],
    ids=["num-classes", "in-channels"],
)
def test_config_disagreeing_with_the_tensors_is_refused_naming_both(hub, values, fragments):
    edit_config(hub, **values)
    refusal(hub, "model.safetensors", "config.json", *fragments)


def test_integer_tensors_are_refused(hub):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(hub / "model.safetensors"))
    tensors["classifier.bias"] = tensors["classifier.bias"].astype(np.int8)
    save_file(tensors, str(hub / "model.safetensors"))
    refusal(hub, "model.safetensors", "classifier/bias", "int8")


def test_a_directory_without_config_json_says_so(hub):
    (hub / "config.json").unlink()
    refusal(hub, str(hub), "model.safetensors but no config.json")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"[1, 2]", "holds a JSON list"),
        (b'{"model": "squeezenet1_1"\xff}', "is not UTF-8"),
        (b'{"model": "squeezenet1_1", "model_kwargs": [1]}', '"model_kwargs" to be a JSON object'),
        (b'{"model": "squeezenet1_1", "num_classes": "ten"}', '"num_classes" to be an integer'),
        (b'{"model": ', "is not valid JSON"),
    ],
    ids=["list", "not-utf8", "kwargs-list", "classes-text", "truncated"],
)
def test_broken_config_json_is_one_line_naming_it(hub, image, capsys, content, fragment):
    (hub / "config.json").write_bytes(content)
    refusal(hub, str(hub / "config.json"), fragment)
    assert predict_cli.main([image, "--weights", str(hub)]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and str(hub / "config.json") in captured.err, captured.err


def test_orbax_checkpoint_disagreeing_with_its_metadata_is_refused_before_restoring(tmp_path):
    params = flax.traverse_util.unflatten_dict(random_params("squeezenet1_1"), sep="/")
    directory = save_pretrained(tmp_path / "model", {"params": params}, model="squeezenet1_1")
    metadata = json.loads((directory / "metadata.json").read_text())
    metadata["model_kwargs"] = {"num_classes": 10}
    (directory / "metadata.json").write_text(json.dumps(metadata))
    refusal(directory, str(directory), "classifier/kernel", "(1, 1, 512, 1000)", "(1, 1, 512, 10)")
