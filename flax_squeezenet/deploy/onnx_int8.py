"""int8 ONNX: static post-training quantization of the exported graph, checked against the Flax model.

The float32 graph of `flax_squeezenet.deploy.onnx.to_onnx` (whose convolution weights may already lie
on their int8 grid: `flax_squeezenet.int8_rounding`) goes through
`onnxruntime.quantization.quantize_static` in QDQ format: per-channel symmetric int8 weights, uint8 activations,
ranges calibrated on real images (run through the weights' own input convention). The final
GlobalAveragePool stays in float: quantizing its output quantizes the logits themselves, so logits
beyond the largest one seen in calibration saturate (tests/test_int8.py::
test_int8_agrees_with_flax_on_held_back_photos). Keeping the stem convolution in float as well was
measured and did not help (BENCHMARKS.md, "int8 ONNX").
Needs `onnx` and `onnxruntime` (the `export` extra).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from flax_squeezenet.weights.conventions import IMAGENET, InputConvention
from flax_squeezenet.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_one, to_pil
from flax_squeezenet.zoo.models import SqueezeNet

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


def _quantize_static(proto: Any, images_nchw: np.ndarray, batch: int, float_nodes: Sequence[str],
                     ranges_from: Any = None) -> Any:  # fmt: skip
    """`quantize_static` of `proto` (QDQ, per-channel int8 weights, uint8 activations, MinMax), with
    the activation ranges of `ranges_from` (default `proto`) on the same images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="flax_squeezenet_int8_") as scratch:
        ranges = pathlib.Path(scratch) / "ranges.json"  # written by the first call, read by the last

        def quantize(model: Any) -> Any:
            source, output = pathlib.Path(scratch) / "float32.onnx", pathlib.Path(scratch) / "int8.onnx"
            onnx.save(model, source)  # quantize_static moves a ModelProto's weights out to a temporary file
            quantize_static(
                source, output, _calibration_reader(images_nchw, batch),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(float_nodes),
                calibration_cache_path=ranges,
            )  # fmt: skip
            return onnx.load(output)

        if ranges_from is not None:
            quantize(ranges_from)
        return quantize(proto)


def quantize_int8(proto: Any, calibration_nhwc: np.ndarray, float_nodes: Sequence[str] = FLOAT_NODES, *,
                  ranges_from: Any = None) -> Any:  # fmt: skip
    """The int8 QDQ `onnx.ModelProto` of the float32 export `proto`, calibrated on `calibration_nhwc`.

    The nodes named in `float_nodes` stay in float. Weights are rounded to the nearest integer of
    their channel's grid: weights already on it (`int8_rounding.adaround_int8`) keep their integers.
    `ranges_from` (a float32 export of the same graph: the model such weights were fitted to) gives
    the activation ranges instead of `proto`. With a fixed input batch, calibration runs in batches
    of exactly that size.
    """
    require_onnxruntime()
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
    return _quantize_static(proto, images, batch, float_nodes, ranges_from)


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


def flax_logits(module: SqueezeNet, variables: Mapping[str, Any], images_nhwc: np.ndarray) -> np.ndarray:
    """The Flax model's eval-mode logits on `images_nhwc`, in batches of `CALIBRATION_BATCH`."""
    apply = jax.jit(module.apply)
    return np.concatenate([
        np.asarray(apply(variables, images_nhwc[i : i + CALIBRATION_BATCH]))
        for i in range(0, len(images_nhwc), CALIBRATION_BATCH)
    ])  # fmt: skip


def calibration_images(
    calibration: str | os.PathLike | Sequence[str | os.PathLike] | np.ndarray,
    channels: int,
    preprocessing: InputConvention | None = None,
    input_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """The NHWC float32 calibration batch for a model with `channels` input channels.

    `calibration` is a folder of images, a list of image files, or an NHWC array already prepared
    (returned as float32). Files are prepared by `preprocessing`, the weights' own input
    convention (default: ImageNet's, for 3 channels only); with `input_shape` its crop size must
    be the shape's height and width. ValueError naming the file or the mismatch otherwise.
    """
    if isinstance(calibration, np.ndarray):
        if calibration.ndim != 4 or calibration.shape[-1] != channels or len(calibration) == 0:
            raise ValueError(f"expected prepared calibration images of shape (N, H, W, {channels}), "
                             f"got {calibration.shape}")  # fmt: skip
        return calibration.astype(np.float32)
    if preprocessing is None:
        if channels != 3:
            raise ValueError(
                f"a {channels}-channel model needs the input convention it was trained with "
                "(preprocessing=InputConvention(...); on the command line --mean, --std)"
            )
        preprocessing = IMAGENET
    if preprocessing.channels != channels:
        raise ValueError(f"expected a {channels}-channel input convention for this model, "
                         f"got channel_order {preprocessing.channel_order!r}")  # fmt: skip
    if input_shape is not None and tuple(input_shape[2:]) != (preprocessing.crop_size,) * 2:
        raise ValueError(f"input shape {'x'.join(map(str, input_shape))} does not match the input "
                         f"convention's crop size {preprocessing.crop_size}")  # fmt: skip
    paths = image_files(calibration) if isinstance(calibration, (str, os.PathLike)) else list(calibration)
    if not paths:
        raise ValueError("expected at least one calibration image")
    return preprocessing.preprocess(paths)
