"""safetensors + config.json (the Hugging Face Hub layout): round trip, safe writes, hf:// loads."""

import hashlib
import http.server
import json
import os
import threading

import numpy as np
import pytest
from test_pretrained import assert_trees_equal, isolated_cache, random_variables  # noqa: F401

import flax_squeezenet as fsq
import flax_squeezenet.nnx as fsq_nnx
from flax_squeezenet.weights import safetensors_io
from flax_squeezenet.weights.conventions import InputConvention
from flax_squeezenet.weights.pretrained import input_convention

pytest.importorskip("safetensors", reason="the safetensors format needs the safetensors package")
from safetensors.numpy import load_file  # noqa: E402


def test_round_trip_with_documented_names_and_config(tmp_path):
    module = fsq.squeezenet1_0_complex_bypass(num_classes=10, in_channels=1)
    variables = random_variables(module)
    gray = InputConvention(mean=(0.286,), std=(0.353,), resize_size=64, crop_size=64, channel_order="L")
    fsq.save_pretrained(tmp_path / "hub", variables, model="squeezenet1_0_complex_bypass", format="safetensors",
                        num_classes=10, in_channels=1, preprocessing=gray, class_names=list("abcdefghij"))  # fmt: skip
    assert sorted(os.listdir(tmp_path / "hub")) == ["config.json", "model.safetensors"]
    tensors = load_file(str(tmp_path / "hub" / "model.safetensors"))
    assert {"conv1.kernel", "fire2.squeeze.kernel", "fire2_bypass.bias", "fire9.expand3x3.bias", "classifier.kernel"} <= set(tensors)
    assert tensors["conv1.kernel"].shape == (7, 7, 1, 96), "HWIO"
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert (config["model"], config["num_classes"], config["in_channels"]) == ("squeezenet1_0_complex_bypass", 10, 1)
    assert config["preprocessing"]["crop_size"] == 64 and config["class_names"][0] == "a"
    loaded_module, loaded = fsq.load_pretrained(tmp_path / "hub")
    assert loaded_module == module
    assert_trees_equal(loaded, variables)
    assert input_convention(tmp_path / "hub") == gray
    assert fsq_nnx.load_pretrained(tmp_path / "hub").in_channels == 1


def test_a_failed_save_keeps_the_previous_one_and_others_are_not_replaced(tmp_path, monkeypatch):
    variables = random_variables(fsq.squeezenet1_1())
    target = tmp_path / "hub"
    fsq.save_pretrained(target, variables, model="squeezenet1_1", format="safetensors")
    before = (target / "model.safetensors").read_bytes()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        fsq.save_pretrained(target, random_variables(fsq.squeezenet1_1(), seed=1), model="squeezenet1_1", format="safetensors")
    assert (target / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"], "no temporary directory is left"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not replacing"):
        fsq.save_pretrained(tmp_path / "mine", variables, model="squeezenet1_1", format="safetensors")
    with pytest.raises(ValueError, match="expected format"):
        fsq.save_pretrained(tmp_path / "other", variables, model="squeezenet1_1", format="npz")


def test_save_keeps_the_users_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        fsq.save_pretrained(tmp_path / "hub", random_variables(fsq.squeezenet1_1()), model="squeezenet1_1", format="safetensors")
    finally:
        os.umask(previous)
    assert (tmp_path / "hub").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "hub" / "config.json").stat().st_mode & 0o777 == 0o640


def test_broken_config_or_weights_name_the_file(tmp_path):
    fsq.save_pretrained(tmp_path / "hub", random_variables(fsq.squeezenet1_1()), model="squeezenet1_1", format="safetensors")
    (tmp_path / "hub" / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        fsq.load_pretrained(tmp_path / "hub")
    (tmp_path / "hub" / "config.json").write_text('{"model": "squeezenet1_1"}')
    (tmp_path / "hub" / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        fsq.load_pretrained(tmp_path / "hub")


# --- hf://owner/repo[@revision] through huggingface_hub, against a local stand-in for the Hub ------


@pytest.fixture
def local_hub(tmp_path):
    """A local HTTP server answering the Hub's file URLs (/{repo}/resolve/{revision}/{file}).

    `files[(repo, name)] = (bytes served, bytes whose sha256 the server states)`."""
    files, requests = {}, []
    commit = "0123456789abcdef0123456789abcdef01234567"

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body):
            parts = self.path.split("?")[0].strip("/").split("/")
            key = ("/".join(parts[:2]), parts[-1]) if len(parts) == 5 and parts[2] == "resolve" else None
            if key not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.end_headers()
                return
            data, stated = files[key]
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(stated).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self):
            self._answer(body=False)

        def do_GET(self):
            requests.append(self.path)
            self._answer(body=True)

        def log_message(self, format, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield files, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_hf_name_loads_through_huggingface_hub_and_is_cached(tmp_path, local_hub, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    files, endpoint, requests = local_hub
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    variables = random_variables(fsq.squeezenet1_1(num_classes=3))
    saved = fsq.save_pretrained(tmp_path / "repo", variables, model="squeezenet1_1", format="safetensors", num_classes=3)
    for name in ("config.json", "model.safetensors"):
        files[("owner/squeeze", name)] = ((saved / name).read_bytes(),) * 2
    module, loaded = fsq.load_pretrained("hf://owner/squeeze@main", cache_dir=tmp_path / "cache")
    assert module.num_classes == 3
    assert_trees_equal(loaded, variables)
    assert sorted(requests)[-1].endswith("model.safetensors")
    fetched = len(requests)
    again = fsq_nnx.load_pretrained("hf://owner/squeeze@main", cache_dir=tmp_path / "cache")
    assert len(requests) == fetched, "the Hub cache is reused"
    np.testing.assert_array_equal(again.classifier.kernel[...], variables["params"]["classifier"]["kernel"])
    with pytest.raises(fsq.DownloadError, match="hf://owner/missing"):
        fsq.load_pretrained("hf://owner/missing", cache_dir=tmp_path / "cache")


def test_malformed_hub_names_are_refused():
    with pytest.raises(ValueError, match="expected hf://owner/repo"):
        safetensors_io.hub_directory("hf://just-a-name")


def test_hf_weights_not_matching_the_stated_sha256_are_refused_and_removed(tmp_path, local_hub, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    files, endpoint, _ = local_hub
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    saved = fsq.save_pretrained(tmp_path / "repo", random_variables(fsq.squeezenet1_1()), model="squeezenet1_1", format="safetensors")
    weights = (saved / "model.safetensors").read_bytes()
    corrupt = weights[:-1] + bytes([weights[-1] ^ 1])
    files[("owner/squeeze", "config.json")] = ((saved / "config.json").read_bytes(),) * 2
    files[("owner/squeeze", "model.safetensors")] = (corrupt, weights)
    with pytest.raises(fsq.DownloadError, match="corrupt"):
        fsq.load_pretrained("hf://owner/squeeze", cache_dir=tmp_path / "cache")
    stated = hashlib.sha256(weights).hexdigest()
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.name == stated]
