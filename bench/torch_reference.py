"""torchvision's SqueezeNet, layer for layer, in plain PyTorch: the benchmarks' PyTorch peer.

torchvision is not a dependency, so its `squeezenet1_0`/`squeezenet1_1` are rebuilt here from the
same layer plan as the Flax models (`flax_squeezenet.zoo.layers.layer_plan`): the modules, their
order, initialisation and `torch.flatten` output are torchvision's. Benchmark-only: the
library never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flax_squeezenet.zoo.layers import Layer, convolutions, layer_plan
from flax_squeezenet.zoo.stages import Stage


class TorchFire(nn.Module):
    """torchvision's `Fire`: squeeze 1x1 + ReLU, then expand 1x1 and 3x3 + ReLU, concatenated."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


def _torch_layers(layer: Layer) -> list[nn.Module]:
    """torchvision's `features` entries for one plan layer."""
    if layer.kind == "max_pool":
        return [nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)]
    if layer.kind == "fire":
        return [TorchFire(layer.in_channels, *(conv.out_channels for conv in layer.convs))]
    (conv,) = layer.convs
    return [
        nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel, stride=conv.stride, padding=conv.padding),
        nn.ReLU(inplace=True),
    ]


class TorchSqueezeNet(nn.Module):
    """torchvision's `SqueezeNet` (NCHW) for a stage description without bypass; with
    `classifier_padding=1`, Caffe's (the paper's) classifier."""

    def __init__(
        self, stages: Sequence[Stage], num_classes: int = 1000, dropout: float = 0.5, classifier_padding: int = 0
    ):
        super().__init__()
        self.plan = layer_plan(stages, 3, num_classes, "none", classifier_padding)
        *backbone, classifier = self.plan
        self.features = nn.Sequential(*(module for layer in backbone for module in _torch_layers(layer)))
        (head,) = classifier.convs
        self.final_conv = nn.Conv2d(head.in_channels, num_classes, kernel_size=1, padding=head.padding)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), self.final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is self.final_conv:
                    nn.init.normal_(module.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def _convs_in_flax_order(model: TorchSqueezeNet) -> list[nn.Conv2d]:
    convs: list[nn.Conv2d] = []
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            convs.append(layer)
        elif isinstance(layer, TorchFire):
            convs += [layer.squeeze, layer.expand1x1, layer.expand3x3]
    return convs + [model.final_conv]


def load_flax_params(model: TorchSqueezeNet, params: Mapping[str, Any]) -> TorchSqueezeNet:
    """Copy a Flax SqueezeNet's `params` (HWIO kernels) into `model` (OIHW), in place; returns it."""
    paths = [conv.path for conv in convolutions(model.plan)]
    convs = _convs_in_flax_order(model)
    with torch.no_grad():
        for conv, path in zip(convs, paths):
            leaf: Any = params
            for key in path:
                if key not in leaf:
                    raise ValueError(f"expected a parameter {'/'.join(path)} in params; it is missing")
                leaf = leaf[key]
            kernel = np.array(leaf["kernel"], np.float32).transpose(3, 2, 0, 1)
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            conv.bias.copy_(torch.from_numpy(np.array(leaf["bias"], np.float32)))
    return model
