"""flax_squeezenet: SqueezeNet (Iandola et al., 2016) for JAX/Flax.

Models are Flax linen modules over NHWC float images:

    import jax, jax.numpy as jnp
    from flax_squeezenet import squeezenet1_1
    model = squeezenet1_1(num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    logits = model.apply(variables, images)

`load_pretrained("squeezenet1_1")` gives torchvision's ImageNet weights, `preprocess` prepares
images as torchvision does, and `imagenet_class_names()` names the 1,000 classes.

What is where (each subpackage imports only the ones below it; tests/test_layout.py keeps the rule):
- cli: the `squeezenet-predict`, `-export`, `-info` and `-compress` commands.
- nnx: the NNX face of the zoo (`import flax_squeezenet.nnx`): its modules and `load_pretrained`.
- deploy: ONNX (`onnx`), int8 ONNX (`onnx_int8`, `int8_rounding`) and LiteRT (`tflite`) export.
- compression: Deep Compression (pruning, weight sharing, adaptive rounding), post-training.
- weights: pretrained names and the download cache (`pretrained`), every file format (`pth`, `ncnn`,
  `deepcompression` and `netfile` for `.net`, `sqz`, `safetensors_io`), input conventions and
  preprocessing, the ImageNet class names.
- zoo: the models themselves: stage descriptions (`stages`), the layer plan (`layers`), the
  XLA:CPU speed forms (`ops`), linen (`models`) and NNX (`zoo.nnx`) modules, `summary`, `xla_options`.
- storage: paths as users write them, whole-or-absent writes, verified downloads.
The training program is the separate `train` package (`python -m train`), which the library never imports.
"""

from flax_squeezenet.deploy.onnx import save_onnx, to_onnx
from flax_squeezenet.deploy.tflite import save_tflite
from flax_squeezenet.storage.download import DownloadError, cache_dir
from flax_squeezenet.weights.conventions import InputConvention
from flax_squeezenet.weights.imagenet import imagenet_class_names
from flax_squeezenet.weights.preprocess import IMAGENET_MEAN, IMAGENET_STD, load_image, preprocess
from flax_squeezenet.weights.pretrained import PRETRAINED, input_convention, load_pretrained, save_pretrained
from flax_squeezenet.weights.pth import UnsafePickleError, load_pth
from flax_squeezenet.zoo.layers import Convolution, Layer, StageFeature, feature_info, layer_plan, min_input_size
from flax_squeezenet.zoo.models import (
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
from flax_squeezenet.zoo.stages import V1_0, V1_1, ConvStage, FireStage, PoolStage, Stage, metaparameter_stages
from flax_squeezenet.zoo.summary import summary
from flax_squeezenet.zoo.xla_options import compiler_options

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
    "InputConvention",
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
    "input_convention",
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
