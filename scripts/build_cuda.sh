#!/usr/bin/env bash
# Builds Mirante's CUDA binaries (`mirante`, `train_bench`, `encoder_bench`) on a machine without
# a GPU or a CUDA toolkit: the CUDA 13.0 compiler, headers and libraries come from NVIDIA's PyPI
# wheels, and a stub libcuda.so (the driver library, which only a GPU machine has) satisfies the
# linker. The binaries then run on any machine with an NVIDIA driver for CUDA 13.0 or newer and
# the CUDA 13 runtime libraries (cuBLAS, cuRAND, NVRTC: PyTorch's wheels carry them); see
# docs/gpu.md and scripts/gpu_check.sh.
#
#   scripts/build_cuda.sh [COMPUTE_CAP]     # default 90 (H100/H200); 80 for A100, 89 for L4
#
# Output: target-cuda/release/{mirante,train_bench,encoder_bench}. The first build compiles
# candle's kernels with nvcc (about 20 minutes on 2 cores).
set -euo pipefail
CAP=${1:-90}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLKIT=${MIRANTE_CUDA_TOOLKIT:-$ROOT/target-cuda/toolkit}
CU=$TOOLKIT/nvidia/cu13

if [ ! -x "$CU/bin/nvcc" ] || [ ! -x "$CU/nvvm/bin/cicc" ]; then
  mkdir -p "$TOOLKIT/wheels"
  for p in nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-crt \
           nvidia-cuda-nvrtc nvidia-cublas nvidia-nvvm; do
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$TOOLKIT/wheels" "$p>=13.0,<13.1"
  done
  # cuRAND numbers its releases on its own: 10.4.0 is CUDA 13.0's.
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_27_x86_64 -d "$TOOLKIT/wheels" "nvidia-curand==10.4.0.35"
  for w in "$TOOLKIT"/wheels/*.whl; do unzip -qo "$w" -d "$TOOLKIT"; done
  chmod +x "$CU"/bin/* "$CU"/nvvm/bin/*
fi

# Unversioned names for the linker, and a stub driver library exporting every cu* symbol of
# cuda.h (the real one is loaded at run time by its soname, libcuda.so.1).
for l in cublas cublasLt curand nvrtc cudart; do
  ln -sf "$(basename "$(ls "$CU"/lib/lib$l.so.* | head -1)")" "$CU/lib/lib$l.so"
done
if [ ! -f "$CU/lib/libcuda.so" ]; then
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$CU/include/cuda.h" | sort -u |
    awk '{print "void "$1"(void){}"}' >"$TOOLKIT/libcuda_stub.c"
  gcc -shared -fPIC -o "$CU/lib/libcuda.so" -Wl,-soname,libcuda.so.1 "$TOOLKIT/libcuda_stub.c"
fi

export CUDA_ROOT=$CU CUDA_HOME=$CU CUDARC_CUDA_VERSION=13000 CUDA_COMPUTE_CAP=$CAP
export PATH=$CU/bin:$PATH CARGO_TARGET_DIR=$ROOT/target-cuda
cd "$ROOT"
cargo build --release -p mirante-tests -p mirante-cli --bins --features mirante/cuda
ls -la target-cuda/release/{mirante,train_bench,encoder_bench}
