"""Parity with torchvision's SqueezeNet, rebuilt here layer for layer in torch.nn.

The weights travel through a real `.pth` written by `torch.save` and read by `load_pretrained`
(without torch), so the file reader, the name/layout conversion and the model are all checked.
"""

import re

import jax
import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

torch = pytest.importorskip("torch", reason="torch is the reference implementation for these tests")
nn = torch.nn

from flax_squeezenet import IMAGENET_MEAN, IMAGENET_STD, V1_0, V1_1, load_pretrained, save_pretrained  # noqa: E402
from flax_squeezenet.weights import deepcompression  # noqa: E402


class TorchFire(nn.Module):
    """torchvision.models.squeezenet.Fire."""

    def __init__(self, inplanes, squeeze_planes, expand1x1_planes, expand3x3_planes):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], 1
        )


class TorchSqueezeNet(nn.Module):
    """torchvision.models.squeezenet.SqueezeNet (versions "1_0" and "1_1")."""

    def __init__(self, version: str, num_classes: int = 1000):
        super().__init__()
        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)  # noqa: E731
        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, kernel_size=7, stride=2), nn.ReLU(inplace=True), pool(),
                TorchFire(96, 16, 64, 64), TorchFire(128, 16, 64, 64), TorchFire(128, 32, 128, 128), pool(),
                TorchFire(256, 32, 128, 128), TorchFire(256, 48, 192, 192), TorchFire(384, 48, 192, 192),
                TorchFire(384, 64, 256, 256), pool(),
                TorchFire(512, 64, 256, 256),
            )  # fmt: skip
        else:
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), pool(),
                TorchFire(64, 16, 64, 64), TorchFire(128, 16, 64, 64), pool(),
                TorchFire(128, 32, 128, 128), TorchFire(256, 32, 128, 128), pool(),
                TorchFire(256, 48, 192, 192), TorchFire(384, 48, 192, 192),
                TorchFire(384, 64, 256, 256), TorchFire(512, 64, 256, 256),
            )  # fmt: skip
        final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def random_reference(version: str, seed: int) -> TorchSqueezeNet:
    """A reference net with random kernels and biases, scaled so that logits are O(1), not ~0."""
    torch.manual_seed(seed)
    net = TorchSqueezeNet(version).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight)
                nn.init.uniform_(module.bias, -0.1, 0.1)
        net.classifier[1].weight.mul_(3.0)
    return net


@pytest.fixture(scope="module", params=["1_0", "1_1"])
def reference(request, tmp_path_factory):
    version = request.param
    net = random_reference(version, seed=len(version) + ord(version[-1]))
    path = tmp_path_factory.mktemp("pth") / f"squeezenet{version}.pth"
    torch.save(net.state_dict(), path)
    module, variables = load_pretrained(path)
    return version, net, module, jax.jit(module.apply), variables


@pytest.mark.parametrize("size", [224, 225, 231])
def test_logits_match_torchvision(reference, size):
    version, net, module, apply, variables = reference
    assert module.stages == {"1_0": V1_0, "1_1": V1_1}[version]
    images = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    logits = np.asarray(apply(variables, images))
    assert np.abs(expected).max() > 0.1, "reference logits are ~0: the comparison would be vacuous"
    assert logits.shape == expected.shape == (2, 1000)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_features_match_torchvision(reference):
    version, net, module, _, variables = reference
    images = np.random.default_rng(0).normal(size=(1, 227, 227, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net.features(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    feature_map = np.asarray(module.apply(variables, images, output="feature_map"))
    np.testing.assert_allclose(feature_map, expected, atol=1e-4, rtol=0)


# Where torchvision's `features` is sliced for each "stages" entry (after conv1's ReLU, and after
# the last Fire module before each pool).
TORCHVISION_SLICES = {
    "1_0": {"stride2": 2, "stride4": 6, "stride8": 11, "stride16": 13},
    "1_1": {"stride2": 2, "stride4": 5, "stride8": 8, "stride16": 13},
}


def test_stage_features_match_slices_of_torchvision(reference):
    version, net, module, _, variables = reference
    images = np.random.default_rng(1).normal(size=(1, 99, 99, 3)).astype(np.float32)
    stages = module.apply(variables, images, output="stages")
    assert list(stages) == list(TORCHVISION_SLICES[version])
    with torch.no_grad():
        for key, end in TORCHVISION_SLICES[version].items():
            expected = net.features[:end](torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
            assert module.feature_info[key].channels == expected.shape[1]
            np.testing.assert_allclose(np.asarray(stages[key]), expected.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)


# --- the paper's Deep Compression v1.0 against Caffe's own description of the net ----------------


def caffe_forward(prototxt: str, convs, data: torch.Tensor) -> torch.Tensor:
    """Caffe's deploy-mode forward pass of `prototxt` (Convolution, ReLU, MAX pooling in ceil mode,
    global AVE pooling, Concat, Dropout), with `convs` the (kernel, bias) of its convolutions in
    prototxt order. Independent of the package's layer plan: read from the prototxt alone."""
    functional = torch.nn.functional
    blobs, weights = {"data": data}, iter(convs)
    for block in re.findall(r"^layer \{\n(.*?)^\}", prototxt, re.S | re.M):
        field = lambda key, default=None: (re.findall(rf"\b{key}: \"?(\w+)", block) or [default])[0]  # noqa: E731
        inputs = [blobs[name] for name in re.findall(r'bottom: "([^"]+)"', block)]
        kind, top = field("type"), re.search(r'top: "([^"]+)"', block)[1]
        if kind == "Convolution":
            kernel, bias = next(weights)
            assert kernel.shape[0] == int(field("num_output")) and kernel.shape[-1] == int(field("kernel_size"))
            out = functional.conv2d(inputs[0], torch.from_numpy(kernel), torch.from_numpy(bias),
                                    stride=int(field("stride", 1)), padding=int(field("pad", 0)))  # fmt: skip
        elif kind == "ReLU":
            out = functional.relu(inputs[0])
        elif kind == "Pooling" and field("pool") == "MAX":
            out = functional.max_pool2d(inputs[0], int(field("kernel_size")), int(field("stride")), ceil_mode=True)
        elif kind == "Pooling":
            assert field("pool") == "AVE" and field("global_pooling") == "true"
            out = inputs[0].mean(dim=(2, 3))
        elif kind == "Concat":
            out = torch.cat(inputs, dim=1)
        else:
            assert kind == "Dropout", kind
            out = inputs[0]
        blobs[top] = out
    assert next(weights, None) is None, "the prototxt has fewer convolutions than the file"
    return out


def test_deep_compression_logits_match_caffe(tmp_path):
    net_file = require_shared("pretrained/deepcompression_squeezenet1_0.net")
    prototxt = require_shared("pretrained/deepcompression_squeezenet1_0.prototxt").read_text()
    photos = [require_shared(f"images/{name}") for name in ("cat.jpg", "cat2.jpeg")]
    rgb = np.stack([np.asarray(Image.open(p).convert("RGB").resize((227, 227), Image.BILINEAR)) for p in photos])
    caffe_input = rgb[..., ::-1].astype(np.float32) - np.float32(deepcompression.CAFFE_BGR_MEAN)
    with torch.no_grad():
        expected = caffe_forward(prototxt, deepcompression.read_convolutions(net_file),
                                 torch.from_numpy(np.ascontiguousarray(caffe_input.transpose(0, 3, 1, 2))))  # fmt: skip
    expected = expected.numpy()

    module, variables = load_pretrained(net_file)
    assert module.classifier_padding == 1
    images = ((rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)
    logits = np.asarray(module.apply(variables, images))
    tolerance = 1e-4 * np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=tolerance)
    unpadded = np.asarray(module.clone(classifier_padding=0).apply(variables, images))
    assert np.abs(unpadded - expected).max() > 100 * tolerance, "the padding must matter for this test to mean anything"

    saved = save_pretrained(tmp_path / "caffe", variables, model="squeezenet1_0", classifier_padding=1)
    reloaded, reloaded_variables = load_pretrained(saved)
    assert reloaded.classifier_padding == 1
    np.testing.assert_array_equal(reloaded.apply(reloaded_variables, images), logits)
