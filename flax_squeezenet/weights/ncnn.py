"""Read SqueezeNet weights from an ncnn export (a text `.param` graph and a binary `.bin`).

The `.param` file is a magic line (7767517), a "layers blobs" count line, then one layer a line:
type, name, input and output counts, the blob names, then `key=value` pairs; for a Convolution
0 is the output channels, 1 the kernel width (11 its height, default the width), 5 whether it has a
bias and 6 its weight count. The `.bin` file holds, for each Convolution in `.param` order, a 4-byte
tag (0x01306B47: fp16 weights follow, 0: fp32 weights follow), the weights in (out, in, kh, kw)
layout padded to a multiple of 4 bytes, then the bias as fp32.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from flax_squeezenet.weights.convert import Params, from_conv_sequence, torchvision_model

PARAM_MAGIC = "7767517"
FP16_TAG = 0x01306B47
FP32_TAG = 0


@dataclasses.dataclass(frozen=True)
class _ConvSpec:
    name: str
    out_channels: int
    kernel_h: int
    kernel_w: int
    has_bias: bool
    weight_count: int

    @property
    def in_channels(self) -> int:
        return self.weight_count // (self.out_channels * self.kernel_h * self.kernel_w)


def _parse_param(text: str, path: str) -> list[_ConvSpec]:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [PARAM_MAGIC]:
        raise ValueError(f"{path} is not an ncnn .param file: expected the magic line {PARAM_MAGIC}")
    convs = []
    for number, tokens in enumerate(lines[2:], start=3):
        if tokens[0] != "Convolution":
            continue
        try:
            n_in, n_out = int(tokens[2]), int(tokens[3])
            options = dict(token.split("=", 1) for token in tokens[4 + n_in + n_out :])
            kernel_w = int(options.get("1", "1"))
            spec = _ConvSpec(
                name=tokens[1],
                out_channels=int(options["0"]),
                kernel_h=int(options.get("11", kernel_w)),
                kernel_w=kernel_w,
                has_bias=options.get("5", "0") == "1",
                weight_count=int(options["6"]),
            )
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"{path}, line {number}: malformed Convolution layer") from None
        if spec.weight_count % (spec.out_channels * spec.kernel_h * spec.kernel_w):
            raise ValueError(f"{path}, line {number}: weight count does not fit the kernel shape")
        convs.append(spec)
    return convs


def _read_weights(data: bytes, specs: list[_ConvSpec], path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    convs, offset = [], 0

    def take(count: int, dtype: type) -> np.ndarray:
        nonlocal offset
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(data):
            raise ValueError(f"{path} ends early: the .param file describes more weights")
        array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset)
        offset += size + (-size) % 4
        return array.astype(np.float32)

    for spec in specs:
        tag = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if tag == FP16_TAG:
            weights = take(spec.weight_count, np.float16)
        elif tag == FP32_TAG:
            weights = take(spec.weight_count, np.float32)
        else:
            raise ValueError(f"{path}: conv {spec.name} has weight tag {tag:#010x}; only fp16 and fp32 are supported")
        kernel = weights.reshape(spec.out_channels, spec.in_channels, spec.kernel_h, spec.kernel_w)
        bias = take(spec.out_channels, np.float32) if spec.has_bias else np.zeros(spec.out_channels, np.float32)
        convs.append((kernel, bias))
    if offset != len(data):
        raise ValueError(f"{path} has {len(data) - offset} bytes more than the .param file describes")
    return convs


def ncnn_paths(path: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """The (.param, .bin) pair for either of its files."""
    path = pathlib.Path(path).expanduser()
    return path.with_suffix(".param"), path.with_suffix(".bin")


def load_ncnn(path: str | os.PathLike) -> tuple[str, Params]:
    """(torchvision architecture name, Flax params) from an ncnn export; `path` is either file."""
    param_path, bin_path = ncnn_paths(path)
    for file in (param_path, bin_path):
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: an ncnn model needs both the .param and the .bin file")
    try:
        text = param_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{param_path} is not an ncnn .param file: expected text, found binary data") from None
    specs = _parse_param(text, str(param_path))
    if not specs:
        raise ValueError(f"{param_path} has no Convolution layers")
    convs = _read_weights(bin_path.read_bytes(), specs, str(bin_path))
    name, stages = torchvision_model(convs[0][0].shape)
    return name, from_conv_sequence(convs, stages)
