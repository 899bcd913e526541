"""torchvision's SqueezeNet, layer for layer, in plain PyTorch: the benchmarks' PyTorch peer.

torchvision is not a dependency, so its `squeezenet1_0`/`squeezenet1_1` are rebuilt here from the
same stage descriptions as the Flax models (`flax_squeezenet.models.V1_0`, `V1_1`): the modules,
their order, initialisation and `torch.flatten` output are torchvision's. Benchmark-only: the
library never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from flax_squeezenet.models import Conv, Fire, MaxPool, Stage


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


class TorchSqueezeNet(nn.Module):
    """torchvision's `SqueezeNet` (NCHW) for a stage description without bypass."""

    def __init__(self, stages: Sequence[Stage], num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for stage in stages:
            if isinstance(stage, Conv):
                layers += [
                    nn.Conv2d(channels, stage.features, stage.kernel, stride=stage.stride),
                    nn.ReLU(inplace=True),
                ]
                channels = stage.features
            elif isinstance(stage, MaxPool):
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            else:
                layers.append(TorchFire(channels, stage.squeeze, stage.expand1x1, stage.expand3x3))
                channels = stage.features
        self.features = nn.Sequential(*layers)
        self.final_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
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
    names: list[tuple[str, ...]] = [("conv1",)]
    names += [
        (fire, part)
        for fire in sorted((k for k in params if k.startswith("fire")), key=lambda k: int(k[4:]))
        for part in ("squeeze", "expand1x1", "expand3x3")
    ]
    names.append(("classifier",))
    convs = _convs_in_flax_order(model)
    if len(convs) != len(names):
        raise ValueError(f"expected {len(convs)} convolutions in params, got {len(names)}")
    with torch.no_grad():
        for conv, path in zip(convs, names):
            leaf: Any = params
            for key in path:
                leaf = leaf[key]
            kernel = np.array(leaf["kernel"], np.float32).transpose(3, 2, 0, 1)
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            conv.bias.copy_(torch.from_numpy(np.array(leaf["bias"], np.float32)))
    return model
