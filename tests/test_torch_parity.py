"""Parity with torchvision's SqueezeNet, rebuilt here layer for layer in torch.nn.

The weights travel through a real `.pth` written by `torch.save` and read by `load_pretrained`
(without torch), so the file reader, the name/layout conversion and the model are all checked.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the reference implementation for these tests")
nn = torch.nn

from flax_squeezenet import V1_0, V1_1, load_pretrained  # noqa: E402


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
