"""LiteRT (TFLite) model metadata, as MediaPipe's Tasks and the LiteRT support library read it.

The "TFLITE_METADATA" buffer of a `.tflite` file is a `ModelMetadata` flatbuffer (file identifier
"M001", `metadata_schema.fbs` of MediaPipe and tflite-support): the model's name and description,
the image input's normalization and colour space, and the output's labels file, which is packed
into the `.tflite` file as a zip archive appended to the flatbuffer (where MediaPipe looks for
associated files). Written with the `flatbuffers` builder against the schema's field order,
because the schema's generated Python code ships only with mediapipe and tflite-support, which
the library does not depend on (tests/test_mediapipe.py reads the files back with MediaPipe).
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from collections.abc import Sequence

METADATA_NAME = "TFLITE_METADATA"  # the name of the model's metadata entry MediaPipe reads
FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # every field written here is in the schema's first version
LABELS_FILE = "labels.txt"
# Enum values and union indices of metadata_schema.fbs.
COLOR_SPACES = {"RGB": 1, "GRAYSCALE": 2}
IMAGE_PROPERTIES = 2  # ContentProperties.ImageProperties
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions.NormalizationOptions
TENSOR_AXIS_LABELS = 2  # AssociatedFileType


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """The image input as an app feeds it: `(pixel - mean) / std` on 0-255 pixels, per channel."""

    name: str
    description: str
    color_space: str  # "RGB" or "GRAYSCALE"
    width: int
    height: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def model_metadata(name: str, description: str, image: ImageInput | None, output_name: str,
                   output_description: str, class_names: Sequence[str] | None) -> bytes:  # fmt: skip
    """The `ModelMetadata` flatbuffer of a model with one image input (None: not described) and one
    output whose axis 1 is labelled by `class_names` (in the labels file `LABELS_FILE`)."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)

    def table(fields: Sequence[tuple[int, str, object]]) -> int:
        """A table of (slot, kind, value) fields: kind "offset" (written before), "byte" or "uint"."""
        builder.StartObject(max(slot for slot, _, _ in fields) + 1)
        for slot, kind, value in fields:
            {"offset": builder.PrependUOffsetTRelativeSlot, "byte": builder.PrependUint8Slot,
             "uint": builder.PrependUint32Slot}[kind](slot, value, 0)  # fmt: skip
        return builder.EndObject()

    def offsets(values: Sequence[int]) -> int:
        builder.StartVector(4, len(values), 4)
        for value in reversed(values):
            builder.PrependUOffsetTRelative(value)
        return builder.EndVector()

    def floats(values: Sequence[float]) -> int:
        builder.StartVector(4, len(values), 4)
        for value in reversed(values):
            builder.PrependFloat32(value)
        return builder.EndVector()

    def string(text: str) -> int:
        return builder.CreateString(text)

    inputs = []
    if image is not None:
        size = table([(0, "uint", image.width), (1, "uint", image.height)])
        properties = table([(0, "byte", COLOR_SPACES[image.color_space]), (1, "offset", size)])
        content = table([(0, "byte", IMAGE_PROPERTIES), (1, "offset", properties)])
        normalization = table([(0, "offset", floats(image.mean)), (1, "offset", floats(image.std))])
        unit = table([(0, "byte", NORMALIZATION_OPTIONS), (1, "offset", normalization)])
        inputs.append(table([(0, "offset", string(image.name)), (1, "offset", string(image.description)),
                             (3, "offset", content), (4, "offset", offsets([unit]))]))  # fmt: skip
    output_fields = [(0, "offset", string(output_name)), (1, "offset", string(output_description))]
    if class_names is not None:
        labels = table([(0, "offset", string(LABELS_FILE)), (1, "offset", string("the class names, line i naming class i")),
                        (2, "byte", TENSOR_AXIS_LABELS)])  # fmt: skip
        output_fields.append((6, "offset", offsets([labels])))
    output = table(output_fields)
    subgraph = table([(2, "offset", offsets(inputs)), (3, "offset", offsets([output]))])
    root = table([(0, "offset", string(name)), (1, "offset", string(description)), (3, "offset", offsets([subgraph])),
                  (7, "offset", string(MIN_PARSER_VERSION))])  # fmt: skip
    builder.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def labels_file(class_names: Sequence[str], num_classes: int) -> bytes:
    """The labels file's bytes; ValueError unless there is one single-line, non-empty name per class."""
    if len(class_names) != num_classes:
        raise ValueError(f"expected {num_classes} class names (one per class), got {len(class_names)}")
    bad = next((name for name in class_names if not name.strip() or "\n" in name or "\r" in name), None)
    if bad is not None:
        raise ValueError(f"expected class names of one non-empty line each, got {bad!r}")
    return "".join(f"{name}\n" for name in class_names).encode()


def with_associated_files(model: bytes, associated: dict[str, bytes]) -> bytes:
    """`model` followed by a zip archive of the `associated` files (name -> bytes), as MediaPipe reads
    them; offsets in the archive count from the start of the whole file, as zipfile appends them."""
    if not associated:
        return model
    buffer = io.BytesIO(model)
    buffer.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buffer, "a") as archive:
        for name, content in associated.items():
            archive.writestr(name, content)
    return buffer.getvalue()
