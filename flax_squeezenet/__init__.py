"""flax_squeezenet: SqueezeNet (Iandola et al., 2016) for JAX/Flax.

Models are Flax linen modules over NHWC float images:

    import jax, jax.numpy as jnp
    from flax_squeezenet import squeezenet1_1
    model = squeezenet1_1(num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    logits = model.apply(variables, images)

`load_pretrained("squeezenet1_1")` gives torchvision's ImageNet weights, `preprocess` prepares
images as torchvision does, and `imagenet_class_names()` names the 1,000 classes.

What is where:
- stages: the stage descriptions (`ConvStage`, `FireStage`, `PoolStage`; `V1_0`, `V1_1`,
  `metaparameter_stages`).
- layers: `layer_plan`, the named layers a stage description becomes (what the module, the ONNX
  writer and the weight converters walk); `feature_info`, the "stages" output's maps.
- ops: the XLA:CPU speed forms (`max_pool_3x3_ceil`, `conv_1x1_as_matmul`, ...).
- models: `FireModule`, `SqueezeNet` and its variants (`squeezenet1_0`, `squeezenet1_1`, the
  paper's bypass variants, `squeezenet_metaparameters`), `create_model(name)`, `count_params`.
- pretrained: `load_pretrained` / `save_pretrained` (torchvision .pth read without torch, ncnn,
  the paper's Deep Compression file, Orbax checkpoints), with a download cache (`cache_dir`).
- preprocess, imagenet: torchvision's ImageNet eval transform; the class names.
- xla_options: `compiler_options(dtype)`, the XLA options to jit SqueezeNet with on this backend.
- export: `to_onnx` / `save_onnx` (needs the `onnx` package).
- tflite: `save_tflite`, LiteRT float32 or full-integer int8 (needs `ai-edge-litert`, the `litert` extra;
  imported only when called).
- nnx: the same models as native Flax NNX modules (`import flax_squeezenet.nnx`), `to_nnx`, `to_linen`.
- summary: `summary(model, input_shape)`, the per-layer table (output shape, parameters, FLOPs).
- conventions: `input_convention(name_or_path)`, the preprocessing each weight source expects.
- formats, sizes: which format a weights file is (by its magic number), and the one check of the
  sizes a file declares against the model it names, run by every reader before it allocates.
- safetensors_io: the Hugging Face Hub layout (`save_pretrained(..., format="safetensors")`, `hf://`).
- cli: the `squeezenet-predict`, `squeezenet-export` and `squeezenet-info` commands.
The training program is the separate `train` package (`python -m train`).
"""

from flax_squeezenet.download import DownloadError, cache_dir
from flax_squeezenet.export import save_onnx, to_onnx
from flax_squeezenet.imagenet import imagenet_class_names
from flax_squeezenet.layers import Convolution, Layer, StageFeature, feature_info, layer_plan, min_input_size
from flax_squeezenet.models import (
    MODELS,
    FireModule,
    SqueezeNet,
    count_params,
    create_model,
    squeezenet1_0,
    squeezenet1_0_complex_bypass,
    squeezenet1_0_simple_bypass,
    squeezenet1_1,
    squeezenet_metaparameters,
)
from flax_squeezenet.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess
from flax_squeezenet.pretrained import PRETRAINED, load_pretrained, save_pretrained
from flax_squeezenet.pth import UnsafePickleError, load_pth
from flax_squeezenet.stages import V1_0, V1_1, ConvStage, FireStage, PoolStage, Stage, metaparameter_stages
from flax_squeezenet.summary import summary
from flax_squeezenet.tflite import save_tflite
from flax_squeezenet.xla_options import compiler_options

__all__ = [
    "DownloadError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODELS",
    "PRETRAINED",
    "V1_0",
    "V1_1",
    "ConvStage",
    "Convolution",
    "FireModule",
    "FireStage",
    "Layer",
    "PoolStage",
    "SqueezeNet",
    "Stage",
    "StageFeature",
    "UnsafePickleError",
    "cache_dir",
    "compiler_options",
    "count_params",
    "create_model",
    "feature_info",
    "imagenet_class_names",
    "load_image",
    "load_pretrained",
    "layer_plan",
    "load_pth",
    "metaparameter_stages",
    "min_input_size",
    "preprocess",
    "save_onnx",
    "save_pretrained",
    "save_tflite",
    "squeezenet1_0",
    "squeezenet1_0_complex_bypass",
    "squeezenet1_0_simple_bypass",
    "squeezenet1_1",
    "squeezenet_metaparameters",
    "summary",
    "to_onnx",
]
