"""Pretrained weights: checkpoints, downloads, the safe .pth reader, ncnn files and class names."""

import http.server
import os
import pathlib
import pickle
import socket
import threading
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_shared

from flax_squeezenet import (
    DownloadError,
    UnsafePickleError,
    cache_dir,
    create_model,
    imagenet_class_names,
    load_pretrained,
    load_pth,
    save_pretrained,
)
from flax_squeezenet.weights import deepcompression, imagenet, preprocess, pretrained
from flax_squeezenet.weights.conventions import IMAGENET, InputConvention
from flax_squeezenet.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD
from flax_squeezenet.weights.pretrained import input_convention

NCNN = "pretrained/torchvision_squeezenet1_1.ncnn.param"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache and no class-names override."""
    monkeypatch.setenv("FLAX_SQUEEZENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLAX_SQUEEZENET_CLASS_NAMES", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving files put in its root; records request paths."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def closed_port_url(path: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def random_variables(model, seed=0):
    """Random variables of the module's shapes, without compiling an init."""
    size = model.min_input_size
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, model.in_channels)))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def torchvision_pth(path, version: str, seed: int = 0) -> pathlib.Path:
    """A torchvision SqueezeNet state dict with random weights, written by torch.save."""
    torch = pytest.importorskip("torch", reason="torch writes the reference .pth files")
    from test_torch_parity import random_reference

    torch.save(random_reference(version, seed).state_dict(), path)
    return pathlib.Path(path)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- save_pretrained / load_pretrained ------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    variables = random_variables(create_model("squeezenet1_1", num_classes=10))
    saved = save_pretrained(tmp_path / "ckpt", variables, model="squeezenet1_1", num_classes=10,
                            dropout_rate=0.25, dtype=jnp.bfloat16)  # fmt: skip
    assert saved == (tmp_path / "ckpt").absolute()
    module, loaded = load_pretrained(tmp_path / "ckpt")
    assert (module.num_classes, module.dropout_rate, module.dtype) == (10, 0.25, jnp.bfloat16)
    assert module.stages == create_model("squeezenet1_1").stages
    assert_trees_equal(loaded, variables)


def test_save_round_trips_a_metaparameter_variant(tmp_path):
    model = create_model("squeezenet_metaparameters", base_e=64, incr_e=64, num_classes=5)
    variables = random_variables(model)
    save_pretrained(tmp_path / "meta", variables, model="squeezenet_metaparameters", base_e=64, incr_e=64, num_classes=5)
    module, loaded = load_pretrained(tmp_path / "meta")
    assert module.stages == model.stages
    assert_trees_equal(loaded, variables)


def test_save_replaces_a_checkpoint_and_a_failed_save_keeps_it(tmp_path, monkeypatch):
    model = create_model("squeezenet1_1")
    first, second = random_variables(model, seed=1), random_variables(model, seed=2)
    save_pretrained(tmp_path / "ckpt", first, model="squeezenet1_1")
    save_pretrained(tmp_path / "ckpt", second, model="squeezenet1_1")
    assert_trees_equal(load_pretrained(tmp_path / "ckpt")[1], second)

    def failing_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pretrained.ocp.StandardCheckpointer, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tmp_path / "ckpt", first, model="squeezenet1_1")
    monkeypatch.undo()
    assert_trees_equal(load_pretrained(tmp_path / "ckpt")[1], second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging directories left behind"


def test_save_refuses_to_replace_other_directories_and_unsaveable_options(tmp_path):
    variables = random_variables(create_model("squeezenet1_1"))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        save_pretrained(tmp_path / "photos", variables, model="squeezenet1_1")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"
    with pytest.raises(ValueError, match="kernel_init"):
        save_pretrained(tmp_path / "x", variables, model="squeezenet1_1", kernel_init=lambda: 0)
    with pytest.raises(ValueError, match="unknown model"):
        save_pretrained(tmp_path / "x", variables, model="alexnet")


def test_save_refuses_a_convention_the_model_cannot_be_fed(tmp_path):
    grey_model = create_model("squeezenet1_1", num_classes=3, in_channels=1)
    variables = random_variables(grey_model)
    with pytest.raises(ValueError, match="1-channel model needs its preprocessing saved"):
        save_pretrained(tmp_path / "grey", variables, model="squeezenet1_1", num_classes=3, in_channels=1)
    with pytest.raises(ValueError, match="expected preprocessing for 1-channel images, got 3-channel RGB"):
        save_pretrained(tmp_path / "grey", variables, model="squeezenet1_1", num_classes=3, in_channels=1,
                        preprocessing=IMAGENET)  # fmt: skip
    assert not (tmp_path / "grey").exists()
    grey = InputConvention(mean=(0.3,), std=(0.2,), resize_size=40, crop_size=32, channel_order="L")
    saved = save_pretrained(tmp_path / "grey", variables, model="squeezenet1_1", num_classes=3, in_channels=1,
                            preprocessing=grey)  # fmt: skip
    assert input_convention(saved) == grey
    with pytest.raises(ValueError, match="expected preprocessing for 3-channel images, got 1-channel L"):
        save_pretrained(tmp_path / "rgb", random_variables(create_model("squeezenet1_1")), model="squeezenet1_1",
                        preprocessing=grey)  # fmt: skip


def test_mismatching_architecture_names_the_first_mismatching_parameter(tmp_path):
    save_pretrained(tmp_path / "v1_0", random_variables(create_model("squeezenet1_0")), model="squeezenet1_0")
    with pytest.raises(ValueError, match=r"parameter params/conv1/kernel has shape \(7, 7, 3, 96\).*\(3, 3, 3, 64\)"):
        load_pretrained(tmp_path / "v1_0", model="squeezenet1_1")
    with pytest.raises(ValueError, match=r"params/fire2_bypass/kernel is missing"):
        load_pretrained(tmp_path / "v1_0", model="squeezenet1_0_complex_bypass")
    with pytest.raises(ValueError, match=r"params/conv1/kernel has shape \(7, 7, 3, 96\).*\(7, 7, 1, 96\)"):
        load_pretrained(tmp_path / "v1_0", in_channels=1)


def test_torchvision_v1_0_file_loaded_as_v1_1_names_conv1(tmp_path):
    path = torchvision_pth(tmp_path / "v1_0.pth", "1_0")
    module, _ = load_pretrained(path)
    assert module.stages == create_model("squeezenet1_0").stages
    with pytest.raises(ValueError, match=r"params/conv1/kernel has shape \(7, 7, 3, 96\)"):
        load_pretrained(path, model="squeezenet1_1")


def test_fine_tune_head_keeps_the_backbone(tmp_path):
    variables = random_variables(create_model("squeezenet1_1"))
    save_pretrained(tmp_path / "ckpt", variables, model="squeezenet1_1")
    module, tuned = load_pretrained(tmp_path / "ckpt", num_classes=10, rng=jax.random.key(1))
    assert module.num_classes == 10
    head = tuned["params"]["classifier"]
    assert head["kernel"].shape == (1, 1, 512, 10) and head["bias"].shape == (10,)
    np.testing.assert_array_equal(head["bias"], 0.0)
    assert 0.005 < float(jnp.std(head["kernel"])) < 0.02, "the model's normal(0, 0.01) initialisation"
    backbone = {k: v for k, v in variables["params"].items() if k != "classifier"}
    assert_trees_equal({k: v for k, v in tuned["params"].items() if k != "classifier"}, backbone)
    _, other = load_pretrained(tmp_path / "ckpt", num_classes=10, rng=jax.random.key(2))
    assert not np.array_equal(other["params"]["classifier"]["kernel"], head["kernel"])
    logits = module.apply(tuned, jnp.ones((1, 17, 17, 3)))
    assert logits.shape == (1, 10)


def test_model_kwargs_set_the_parameter_dtype(tmp_path):
    save_pretrained(tmp_path / "ckpt", random_variables(create_model("squeezenet1_1")), model="squeezenet1_1")
    module, variables = load_pretrained(tmp_path / "ckpt", param_dtype=jnp.bfloat16, dropout_rate=0.1)
    assert module.dropout_rate == 0.1
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.bfloat16)}


def test_unknown_name_or_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a pretrained name"):
        load_pretrained("squeezenet2_0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_pretrained(tmp_path / "empty")


# --- named weights: download, verify, convert, cache ---------------------------------------------


def serve_torchvision_weights(http_server, tmp_path, monkeypatch, sha256_prefix=None):
    import hashlib

    root, base_url, requests = http_server
    path = torchvision_pth(tmp_path / "weights.pth", "1_1")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    prefix = sha256_prefix or digest[:8]
    file_name = f"squeezenet1_1-{prefix}.pth"
    (root / file_name).write_bytes(path.read_bytes())
    weights = pretrained.PretrainedWeights("squeezenet1_1", f"{base_url}/{file_name}", prefix, 0.0, 0.0)
    monkeypatch.setitem(pretrained.PRETRAINED, "squeezenet1_1", weights)
    return path, requests


def test_named_weights_download_once_and_load_from_the_cache(http_server, tmp_path, monkeypatch, isolated_cache):
    path, requests = serve_torchvision_weights(http_server, tmp_path, monkeypatch)
    module, variables = load_pretrained("squeezenet1_1")
    expected = load_pretrained(path)[1]
    assert_trees_equal(variables, expected)
    assert len(requests) == 1
    cached = sorted(p.name for p in isolated_cache.iterdir())
    file_name = pretrained.PRETRAINED["squeezenet1_1"].file_name
    assert cached == [pathlib.Path(file_name).stem, file_name], cached  # the checkpoint and its verified source
    _, again = load_pretrained("squeezenet1_1")
    assert len(requests) == 1, "the converted checkpoint is reused"
    assert_trees_equal(again, expected)


def test_sha256_mismatch_raises_and_leaves_no_file(http_server, tmp_path, monkeypatch, isolated_cache):
    serve_torchvision_weights(http_server, tmp_path, monkeypatch, sha256_prefix="00000000")
    with pytest.raises(DownloadError, match="expected one starting with 00000000"):
        load_pretrained("squeezenet1_1")
    assert not any(isolated_cache.rglob("*")), list(isolated_cache.rglob("*"))


def test_offline_error_names_the_url_and_the_local_file_alternative(monkeypatch, tmp_path):
    url = closed_port_url("squeezenet1_0-b66bff10.pth")
    monkeypatch.setitem(pretrained.PRETRAINED, "squeezenet1_0",
                        pretrained.PretrainedWeights("squeezenet1_0", url, "b66bff10", 0.0, 0.0))  # fmt: skip
    with pytest.raises(DownloadError) as error:
        load_pretrained("squeezenet1_0", cache_dir=tmp_path / "elsewhere")
    assert url in str(error.value)
    assert "load_pretrained('/path/to/squeezenet1_0-b66bff10.pth')" in str(error.value)
    assert "--weights" in str(error.value)
    assert not any((tmp_path / "elsewhere").rglob("*"))


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FLAX_SQUEEZENET_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "a"
    assert cache_dir(tmp_path / "b") == tmp_path / "b"
    monkeypatch.delenv("FLAX_SQUEEZENET_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "flax_squeezenet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "flax_squeezenet"


# --- the .pth reader -----------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pth_reader_reads_torch_save_files(tmp_path, zip_format):
    torch = pytest.importorskip("torch", reason="torch writes the reference .pth files")
    state = {
        "conv.weight": torch.randn(4, 3, 2, 2),
        "half": torch.randn(5).half(),
        "count": torch.tensor(7),
        "view": torch.randn(6, 5)[1:, 2:].t(),
        "ints": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    }
    torch.save(state, tmp_path / "s.pth", _use_new_zipfile_serialization=zip_format)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth", _use_new_zipfile_serialization=zip_format)
    for path in (tmp_path / "s.pth", tmp_path / "wrapped.pth"):
        loaded = load_pth(path)
        assert list(loaded) == list(state)
        for key, tensor in state.items():
            assert loaded[key].dtype == tensor.numpy().dtype
            np.testing.assert_array_equal(loaded[key], tensor.numpy())


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pth_reader_refuses_code_in_a_zip_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"conv.weight": RunsCode(marker)}, protocol=2)
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as archive:
        archive.writestr("evil/data.pkl", payload)
        archive.writestr("evil/version", "3\n")
    with pytest.raises(UnsafePickleError, match="system"):
        load_pth(tmp_path / "evil.pth")
    assert not marker.exists()
    pickle.loads(payload)  # what plain unpickling would have done
    assert marker.exists()


def test_pth_reader_refuses_code_in_a_plain_pickle(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(UnsafePickleError):
        load_pth(tmp_path / "evil.pth")
    assert not marker.exists()
    (tmp_path / "eval.pth").write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_pth(tmp_path / "eval.pth")


def test_pth_reader_rejects_files_that_are_not_state_dicts(tmp_path):
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_pth(tmp_path / "text.pth")
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a readable PyTorch state dict.*legacy magic number"):
        load_pth(tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "numbers.pth", "w") as archive:
        archive.writestr("numbers/data.pkl", pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_pth(tmp_path / "numbers.pth")


# --- ncnn export of torchvision's weights (real ImageNet weights, offline) -----------------------


def test_ncnn_weights_classify_the_cats():
    param = require_shared(NCNN)
    module, variables = load_pretrained(param)
    assert module.stages == create_model("squeezenet1_1").stages
    images = preprocess([require_shared("images/cat.jpg"), require_shared("images/cat2.jpeg")])
    probabilities = np.asarray(jax.nn.softmax(jax.jit(module.apply)(variables, images)))
    domestic_cats = slice(281, 286)
    # cat2.jpeg: top-1 is a domestic cat.
    assert 281 <= int(np.argmax(probabilities[1])) <= 285
    # cat.jpg (an orange kitten): torchvision's v1.1 weights put 36% on "kit fox" (278) and 38% on the
    # five domestic cats together; the domestic cats outweigh every other class.
    for row in probabilities:
        others = np.delete(row, np.arange(281, 286))
        assert row[domestic_cats].sum() > others.max()
        assert set(np.argsort(-row)[:5].tolist()) & set(range(281, 286))


def test_ncnn_loads_from_either_file_and_rejects_a_truncated_bin(tmp_path):
    param = require_shared(NCNN)
    _, from_param = load_pretrained(param)
    _, from_bin = load_pretrained(param.with_suffix(".bin"))
    assert_trees_equal(from_param, from_bin)
    (tmp_path / "m.param").write_bytes(param.read_bytes())
    (tmp_path / "m.bin").write_bytes(param.with_suffix(".bin").read_bytes()[:-100])
    with pytest.raises(ValueError, match="ends early"):
        load_pretrained(tmp_path / "m.param")


# --- ImageNet class names ------------------------------------------------------------------------


def write_names(path, names):
    path.write_text("\n".join(names) + "\n")
    return path


def test_class_names_from_the_shared_file():
    names = imagenet_class_names(require_shared("data/imagenet_classes.txt"))
    assert len(names) == 1000
    assert (names[0], names[281], names[285]) == ("tench", "tabby", "Egyptian cat")


def test_class_names_from_the_environment_and_count_check(tmp_path, monkeypatch):
    names = [f"name {i}, synonym" for i in range(1000)]
    monkeypatch.setenv("FLAX_SQUEEZENET_CLASS_NAMES", str(write_names(tmp_path / "n.txt", names)))
    assert imagenet_class_names()[999] == "name 999"
    with pytest.raises(ValueError, match="999 class names, expected 1000"):
        imagenet_class_names(write_names(tmp_path / "short.txt", names[:-1]))


def test_class_names_download_into_the_cache(http_server, monkeypatch, isolated_cache):
    root, base_url, requests = http_server
    write_names(root / "imagenet_classes.txt", [f"c{i}" for i in range(1000)])
    monkeypatch.setattr(imagenet, "CLASS_NAMES_URL", f"{base_url}/imagenet_classes.txt")
    assert imagenet_class_names()[7] == "c7"
    assert imagenet_class_names()[8] == "c8"
    assert len(requests) == 1
    assert (isolated_cache / "imagenet_classes.txt").is_file()


def test_class_names_offline_names_the_url_and_the_variable(monkeypatch, isolated_cache):
    url = closed_port_url("imagenet_classes.txt")
    monkeypatch.setattr(imagenet, "CLASS_NAMES_URL", url)
    with pytest.raises(DownloadError) as error:
        imagenet_class_names()
    assert url in str(error.value) and "FLAX_SQUEEZENET_CLASS_NAMES" in str(error.value)
    assert not (isolated_cache / "imagenet_classes.txt").exists()


# --- the paper's Deep Compression v1.0 (Caffe conventions folded into conv1) --------------------


def test_caffe_input_convention_folds_exactly_into_conv1():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(4, 3, 7, 7)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    patch = rng.integers(0, 256, size=(7, 7, 3)).astype(np.float64)  # one RGB receptive field, HWC
    caffe_input = patch[..., ::-1] - np.array(deepcompression.CAFFE_BGR_MEAN)  # BGR, 0-255 minus mean
    torchvision_input = (patch / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    expected = np.einsum("oihw,hwi->o", kernel, caffe_input) + bias
    folded_kernel, folded_bias = deepcompression.fold_caffe_input(kernel, bias)
    np.testing.assert_allclose(np.einsum("oihw,hwi->o", folded_kernel, torchvision_input) + folded_bias,
                               expected, rtol=1e-5, atol=1e-3)  # fmt: skip


def test_deep_compression_model_loads_and_sees_a_cat(tmp_path):
    path = require_shared("pretrained/deepcompression_squeezenet1_0.net")
    module, variables = load_pretrained(path)
    assert module.stages == create_model("squeezenet1_0").stages
    nonzero = sum(int(np.count_nonzero(leaf)) for leaf in jax.tree_util.tree_leaves(variables["params"]))
    assert nonzero < 0.4 * 1_248_424, "pruned: most weights are zero"
    probabilities = jax.nn.softmax(module.apply(variables, preprocess(require_shared("images/cat2.jpeg"))))
    assert 281 <= int(np.argmax(probabilities[0])) <= 285
    (tmp_path / "cut.net").write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(ValueError, match="not a Deep Compression SqueezeNet v1.0 file"):
        load_pretrained(tmp_path / "cut.net")
