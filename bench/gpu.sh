#!/usr/bin/env bash
# GPU training and inference images/s at batch 256, float32 and bfloat16, flax-squeezenet (jit)
# against PyTorch eager on the same GPU when torch with CUDA is installed.
# Writes gpu_benchmark.md and gpu_benchmark.json to OUTDIR; gives up after 8 minutes.
#   bench/gpu.sh OUTDIR
# Environment: PYTHON (default python3), GPU_BENCH_BATCH (256), GPU_BENCH_SIZE (224),
# GPU_BENCH_REPEATS (10), GPU_BENCH_MODELS ("squeezenet1_0 squeezenet1_1");
# GPU_BENCH_ALLOW_CPU=1 also times PyTorch on a CPU (for testing).
set -euo pipefail
if [ "$#" -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# JAX takes 75% of GPU memory by default; leave PyTorch half of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
exec timeout 480 "${PYTHON:-python3}" "$here/gpu_benchmark.py" "$1"
