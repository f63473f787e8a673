# Sourced by the GPU scripts: puts the CUDA 13 libraries that Mirante's CUDA build links to on
# LD_LIBRARY_PATH, from the system or from PyTorch's wheels, and fails when one is missing.
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
  found=$(find /opt /usr /lib -name "$lib" 2>/dev/null | head -1)
  if [ -z "$found" ]; then echo "missing $lib"; exit 1; fi
  export LD_LIBRARY_PATH="$(dirname "$found"):${LD_LIBRARY_PATH:-}"
done
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
