"""int8 ONNX: static post-training quantization of the exported graph, checked against the Flax model.

The float32 graph of `flax_squeezenet.export.to_onnx` goes through `onnxruntime.quantization.
quantize_static` in QDQ format: per-channel symmetric int8 weights, uint8 activations, ranges
calibrated on real images (a folder, run through the model's own preprocessing). The final
GlobalAveragePool stays in float: quantizing its output quantizes the logits themselves, so logits
beyond the largest one seen in calibration saturate (tests/test_int8.py::
test_int8_agrees_with_flax_on_held_back_photos). Keeping the stem convolution in float as well was
measured and did not help (BENCHMARKS.md, "int8 ONNX").
Needs `onnx` and `onnxruntime` (the `export` extra).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from flax_squeezenet import files
from flax_squeezenet.export import to_onnx
from flax_squeezenet.models import SqueezeNet
from flax_squeezenet.preprocess import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, RESIZE_SIZE, preprocess_one, to_pil

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FLOAT_NODES = ("pooled",)  # the node names export.to_onnx gives; see the module docstring
CALIBRATION_BATCH = 16
HELD_BACK = 0.25  # of a calibration folder, set aside to check the int8 model against the Flax model
MAX_IMAGES = 300  # per part (calibration, held back): bounds memory and calibration time


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How an int8 model's logits compare with the float model's on the same images."""

    images: int
    top1_agreement: float
    max_logit_difference: float


def image_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The image files (by suffix) under `folder`, recursively, sorted; ValueError if there are none."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ValueError(f"calibration folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"calibration folder {folder} holds no images (expected files ending in {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def split_held_back(files: Sequence[pathlib.Path], held_back: float, limit: int) -> tuple[list, list]:
    """(calibration, held back): a fixed shuffle of `files`, the fraction `held_back` set aside.

    Each part has at most `limit` files; both are non-empty when there are at least two files.
    """
    if not 0 < held_back < 1:
        raise ValueError(f"expected a held-back fraction between 0 and 1, got {held_back}")
    if len(files) < 2:
        raise ValueError(f"expected at least 2 calibration images (some are held back to check), got {len(files)}")
    order = np.random.default_rng(0).permutation(len(files))
    shuffled = [files[i] for i in order]
    count = min(max(1, round(len(files) * held_back)), len(files) - 1)
    return shuffled[count:][:limit], shuffled[:count][:limit]


def preprocess_for_model(
    files: Sequence[pathlib.Path],
    *,
    channels: int,
    image_size: int,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """The images as an NHWC float32 batch for a model with `channels` (1 or 3) input channels.

    As `preprocess`: shorter side to `resize_size` (default `image_size`), center crop
    `image_size`, scale to [0, 1], normalise; one channel is the luminance (PIL's "L").
    ValueError naming the file if one cannot be read.
    """
    if channels not in (1, 3):
        raise ValueError(f"expected a model with 1 or 3 input channels, got {channels}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"expected {channels} mean and std values (one per channel), got {len(mean)} and {len(std)}")
    batch = []
    for path in files:
        image = to_pil(path)
        if channels == 1:
            image = image.convert("L")
        pixels = preprocess_one(
            image, resize_size=resize_size or image_size, crop_size=image_size,
            mean=tuple(mean) * (3 // channels), std=tuple(std) * (3 // channels),
        )  # fmt: skip
        batch.append(pixels[..., :channels])
    return np.stack(batch)


def with_fixed_input_shape(proto: Any, shape: Sequence[int]) -> Any:
    """A copy of the exported `proto` whose input is exactly `shape` (N, C, H, W), for static-shape toolchains."""
    import onnx

    (images,) = proto.graph.input
    dims = images.type.tensor_type.shape.dim
    channels = dims[1].dim_value
    if len(shape) != 4 or shape[1] != channels or min(shape) < 1:
        raise ValueError(f"expected an input shape Nx{channels}xHxW of positive sizes, got {'x'.join(map(str, shape))}")
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for dim, size in zip(fixed.graph.input[0].type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    fixed.graph.output[0].type.tensor_type.shape.dim[0].Clear()
    fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_value = shape[0]
    onnx.checker.check_model(fixed)
    return onnx.shape_inference.infer_shapes(fixed, strict_mode=True)


def require_onnxruntime() -> Any:
    """The `onnxruntime` module; ImportError naming the extra to install when it is absent."""
    try:
        import onnxruntime
        import onnxruntime.quantization
    except ImportError:
        raise ImportError(
            "int8 ONNX export needs onnx and onnxruntime: pip install 'flax-squeezenet[export]'"
        ) from None
    return onnxruntime


def _calibration_reader(images_nchw: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(images_nchw[i : i + batch] for i in range(0, len(images_nchw), batch))

        def get_next(self):
            chunk = next(self._batches, None)
            return None if chunk is None else {"images": np.ascontiguousarray(chunk)}

    return Reader()


def quantize_int8(proto: Any, calibration_nhwc: np.ndarray, float_nodes: Sequence[str] = FLOAT_NODES) -> Any:
    """The int8 QDQ `onnx.ModelProto` of the float32 export `proto`, calibrated on `calibration_nhwc`.

    The nodes named in `float_nodes` stay in float. With a fixed input batch, calibration runs in
    batches of exactly that size.
    """
    require_onnxruntime()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(calibration_nhwc) == 0:
        raise ValueError("expected at least one calibration image")
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    images = calibration_nhwc.transpose(0, 3, 1, 2)
    if batch_dim.HasField("dim_value"):
        batch = batch_dim.dim_value
        whole = max(len(images) // batch, 1) * batch  # repeats images when there are fewer than a batch
        images = np.resize(images, (whole, *images.shape[1:]))
    else:
        batch = CALIBRATION_BATCH
    with tempfile.TemporaryDirectory(prefix="flax_squeezenet_int8_") as scratch:
        source, output = pathlib.Path(scratch) / "float32.onnx", pathlib.Path(scratch) / "int8.onnx"
        onnx.save(proto, source)  # quantize_static moves a ModelProto's weights out to a temporary file
        quantize_static(
            source, output, _calibration_reader(images, batch),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(float_nodes),
        )  # fmt: skip
        return onnx.load(output)


def write_onnx(proto: Any, path: str | os.PathLike) -> pathlib.Path:
    """Write `proto` to `path`, whole or not at all, with the mode the user's umask gives."""
    with files.atomic_file(path) as temporary:
        temporary.write_bytes(proto.SerializeToString())
    return files.user_path(path)


def run_onnx(path_or_proto: Any, images_nhwc: np.ndarray) -> np.ndarray:
    """Logits of the ONNX model on NHWC images, in onnxruntime's CPU provider with default options."""
    onnxruntime = require_onnxruntime()
    model = path_or_proto if isinstance(path_or_proto, (str, os.PathLike)) else path_or_proto.SerializeToString()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    (images,) = session.get_inputs()
    batch = images.shape[0] if isinstance(images.shape[0], int) else CALIBRATION_BATCH
    nchw = images_nhwc.transpose(0, 3, 1, 2)
    outputs = []
    for start in range(0, len(nchw), batch):
        chunk = nchw[start : start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append(session.run(None, {images.name: np.ascontiguousarray(padded)})[0][: len(chunk)])
    return np.concatenate(outputs)


def agreement(reference: np.ndarray, logits: np.ndarray) -> Agreement:
    """Top-1 agreement of `logits` with `reference` and their largest absolute difference."""
    return Agreement(
        images=len(reference),
        top1_agreement=float(np.mean(reference.argmax(-1) == logits.argmax(-1))),
        max_logit_difference=float(np.max(np.abs(reference - logits))),
    )


def save_int8_onnx(
    module: SqueezeNet,
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    calibration_nhwc: np.ndarray,
    *,
    input_shape: Sequence[int] | None = None,
) -> pathlib.Path:
    """Write the int8 ONNX export of `module` calibrated on the NHWC batch `calibration_nhwc`.

    `input_shape` (N, C, H, W) fixes the input shape; by default the batch and image size are free.
    Nothing is written if the export or the quantization fails.
    """
    proto = to_onnx(module, variables)
    if input_shape is not None:
        proto = with_fixed_input_shape(proto, input_shape)
    return write_onnx(quantize_int8(proto, np.asarray(calibration_nhwc, np.float32)), path)


def flax_logits(module: SqueezeNet, variables: Mapping[str, Any], images_nhwc: np.ndarray) -> np.ndarray:
    """The Flax model's eval-mode logits on `images_nhwc`, in batches of `CALIBRATION_BATCH`."""
    apply = jax.jit(module.apply)
    return np.concatenate([
        np.asarray(apply(variables, images_nhwc[i : i + CALIBRATION_BATCH]))
        for i in range(0, len(images_nhwc), CALIBRATION_BATCH)
    ])  # fmt: skip


def normalisation(channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple:
    """(mean, std) for calibration images: the given ones, else ImageNet's for 3 channels."""
    if mean is None and std is None:
        if channels != 3:
            raise ValueError(
                f"a {channels}-channel model needs the mean and std it was trained with (--mean, --std)"
            )
        return IMAGENET_MEAN, IMAGENET_STD
    if mean is None or std is None:
        raise ValueError("expected both mean and std, or neither")
    return tuple(mean), tuple(std)


def save_int8_onnx_from_folder(
    module: SqueezeNet,
    variables: Mapping[str, Any],
    path: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    image_size: int = 224,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Agreement:
    """Write the int8 ONNX export calibrated on the images in `folder`; compare it on the held-back ones.

    A fixed share (`HELD_BACK`) of the folder is not used for calibration: the returned `Agreement`
    compares the written file, in onnxruntime, with the Flax model on those images. Images are
    prepared as `preprocess` does at `image_size` (the input shape's, when given): at 224, shorter
    side to 256 and center crop 224, as for ImageNet; at other sizes, shorter side to `image_size`
    and center crop, as the training program's evaluation does. `mean`/`std` default to ImageNet's.
    """
    if input_shape is not None:
        image_size = input_shape[2]
        if input_shape[2] != input_shape[3]:
            raise ValueError(f"expected a square input shape (H = W), got {'x'.join(map(str, input_shape))}")
    require_onnxruntime()
    mean, std = normalisation(module.in_channels, mean, std)
    calibration_files, held_back_files = split_held_back(image_files(folder), HELD_BACK, MAX_IMAGES)
    prepare = functools.partial(
        preprocess_for_model, channels=module.in_channels, image_size=image_size,
        resize_size=RESIZE_SIZE if image_size == CROP_SIZE else image_size, mean=mean, std=std,
    )  # fmt: skip
    held_back = prepare(held_back_files)
    written = save_int8_onnx(module, variables, path, prepare(calibration_files), input_shape=input_shape)
    return agreement(flax_logits(module, variables, held_back), run_onnx(written, held_back))
