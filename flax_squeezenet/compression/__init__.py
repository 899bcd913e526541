"""Deep Compression (Han et al. 2016) for SqueezeNet: magnitude pruning, weight sharing by k-means,
Huffman-coded relative sparse indices, the `.sqz` file `load_pretrained` reads and the paper's
`.net` file.

- api: `compress(weights, bits=..., density=...)`, `save_compressed(compressed, path)`.
- pruning: masks, the cubic schedule, and `prune_by_magnitude`, an optax transformation for training.
- sensitivity: per-layer densities for an overall density, chosen by pruning each layer alone.
- sharing, kmeans: shared-weight kernels and the centroids' fine-tuning gradients.
- adaptive: each weight rounded to the shared value below or above it that best keeps its layer's
  output on calibration images (`compress(..., weight_rounding="adaround", images=...)`).
- trained_sharing: `with_shared_weights`, an optax wrapper training shared weights (centroid updates).
- rounding: adaptive rounding of a convolution's weights onto any grid (shared values here, int8 in
  `flax_squeezenet.deploy`).

The compressed model and its files (`CompressedModel`, `SharedKernel`, `.sqz`, `.net`) live in
`flax_squeezenet.weights`, which reads them; the prune -> retrain -> share -> fine-tune pipeline that
drives training is the training program's (`python -m train.compress`).
"""

from flax_squeezenet.compression.api import FORMATS, compress, encoded_size, read_source, save_compressed
from flax_squeezenet.weights.compressed import CompressedModel, SharedKernel
from flax_squeezenet.weights.sqz import read_compressed

__all__ = [
    "FORMATS",
    "CompressedModel",
    "SharedKernel",
    "compress",
    "encoded_size",
    "read_compressed",
    "read_source",
    "save_compressed",
]
