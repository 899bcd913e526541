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
- retrain: `compress_with_retraining`, the prune -> retrain -> share -> fine-tune pipeline through
  the training program (`train/`, from the checkout).
- sparse, huffman, fileformat, netfile: the encodings and the two file formats.
"""

from flax_squeezenet.compression.api import FORMATS, compress, encoded_size, read_source, save_compressed
from flax_squeezenet.compression.compressed import CompressedModel
from flax_squeezenet.compression.fileformat import read_compressed
from flax_squeezenet.compression.sharing import SharedKernel

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
